//! Reading and editing a bundle's OCI `config.json`.
//!
//! The spec is edited as a JSON tree, not round-tripped through typed structs: an engine may
//! set fields our oci-spec version does not model, and dropping them would silently change the
//! container. What we insert is built with oci-spec types, so it is valid by construction.
use std::{
    io::{Read as _, Write as _},
    path::{Path, PathBuf},
};

use oci_spec::runtime::{
    Hook, HookBuilder, LinuxDeviceBuilder, LinuxDeviceCgroupBuilder, LinuxDeviceType,
};
use serde_json::{Map, Value, json};

use crate::node::{
    devices::ContainerDevice,
    rules::{Access, DevType, Grant, Rule, RuleEntry, RuleType, effective},
};

#[derive(Debug, thiserror::Error)]
pub enum SpecError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not a valid OCI spec: {reason}")]
    Invalid { path: PathBuf, reason: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// The largest config.json we read: real ones are a few KiB; this bounds a hostile one.
pub const MAX_SPEC_BYTES: u64 = 16 << 20;

/// A parsed `config.json` and where it came from.
pub struct Spec {
    pub path: PathBuf,
    pub value: Value,
}

impl Spec {
    pub fn read(bundle: &Path) -> Result<Self, SpecError> {
        let (path, bytes) = Self::read_bytes(bundle)?;
        Self::parse(&bytes, path)
    }

    /// The raw `config.json` of `bundle` (bounded by [`MAX_SPEC_BYTES`]) and its path.
    pub fn read_bytes(bundle: &Path) -> Result<(PathBuf, Vec<u8>), SpecError> {
        let path = bundle.join("config.json");
        let read_error = |source| SpecError::Read {
            path: path.clone(),
            source,
        };
        let mut bytes = Vec::new();
        std::fs::File::open(&path)
            .and_then(|f| {
                // `take` hides the file's size from `read_to_end`, which would then read a
                // 4 KiB spec in nine growing probes: size the buffer from the file.
                let size = f.metadata()?.len().min(MAX_SPEC_BYTES + 1);
                bytes.reserve_exact(size as usize + 1);
                f.take(MAX_SPEC_BYTES + 1).read_to_end(&mut bytes)
            })
            .map_err(read_error)?;
        if bytes.len() as u64 > MAX_SPEC_BYTES {
            return Err(SpecError::Invalid {
                path,
                reason: format!("larger than the {MAX_SPEC_BYTES} bytes accepted"),
            });
        }
        Ok((path, bytes))
    }

    pub fn parse(bytes: &[u8], path: PathBuf) -> Result<Self, SpecError> {
        let value: Value = serde_json::from_slice(bytes).map_err(|e| SpecError::Invalid {
            path: path.clone(),
            reason: e.to_string(),
        })?;
        if !value.is_object() {
            return Err(SpecError::Invalid {
                path,
                reason: "the top level is not an object".into(),
            });
        }
        Ok(Self { path, value })
    }

    fn invalid(&self, reason: impl Into<String>) -> SpecError {
        SpecError::Invalid {
            path: self.path.clone(),
            reason: reason.into(),
        }
    }

    /// `process.env` (empty when absent).
    pub fn env(&self) -> Result<Vec<String>, SpecError> {
        match self.value.pointer("/process/env") {
            None | Some(Value::Null) => Ok(Vec::new()),
            Some(Value::Array(items)) => items
                .iter()
                .map(|v| {
                    v.as_str()
                        .map(String::from)
                        .ok_or_else(|| self.invalid("process.env holds a non-string"))
                })
                .collect(),
            Some(_) => Err(self.invalid("process.env is not an array")),
        }
    }

    /// The container's root filesystem (`root.path`, relative to the bundle unless absolute).
    pub fn rootfs(&self, bundle: &Path) -> Result<PathBuf, SpecError> {
        let path = self
            .value
            .pointer("/root/path")
            .and_then(Value::as_str)
            .ok_or_else(|| self.invalid("root.path is missing"))?;
        Ok(bundle.join(path))
    }

    /// Paths of `linux.devices` entries.
    pub fn device_paths(&self) -> Vec<String> {
        self.value
            .pointer("/linux/devices")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|d| d.get("path").and_then(Value::as_str))
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// `linux.resources.devices` as rules, in order, read as runc reads them. A rule runc
    /// would reject (an unknown type, a number out of range) is an error naming it.
    pub fn device_rules(&self) -> Result<Vec<RuleEntry>, SpecError> {
        let Some(items) = self
            .value
            .pointer("/linux/resources/devices")
            .filter(|v| !v.is_null())
        else {
            return Ok(Vec::new());
        };
        let items = items
            .as_array()
            .ok_or_else(|| self.invalid("linux.resources.devices is not an array"))?;
        items
            .iter()
            .map(|item| {
                let bad = || self.invalid(format!("invalid device rule {item}"));
                let rule_type = match item.get("type").and_then(Value::as_str) {
                    None | Some("a") => RuleType::All,
                    Some("c") | Some("u") => RuleType::Dev(DevType::Char),
                    Some("b") => RuleType::Dev(DevType::Block),
                    Some(_) => return Err(bad()),
                };
                // Absent, null or -1: every number.
                let number = |key: &str| match item.get(key) {
                    None | Some(Value::Null) => Ok(None),
                    Some(v) if v.as_i64() == Some(-1) => Ok(None),
                    Some(v) => v
                        .as_u64()
                        .and_then(|n| u32::try_from(n).ok())
                        .map(Some)
                        .ok_or_else(bad),
                };
                // An absent access means "rwm" in runc; letters other than rwm it ignores.
                let access = match item.get("access") {
                    None | Some(Value::Null) => Access::ALL,
                    Some(Value::String(a)) => Access::parse_lenient(a),
                    Some(_) => return Err(bad()),
                };
                Ok(RuleEntry {
                    allow: item.get("allow").and_then(Value::as_bool) == Some(true),
                    rule: Rule {
                        rule_type,
                        major: number("major")?,
                        minor: number("minor")?,
                        access,
                    },
                })
            })
            .collect()
    }

    /// Whether the container gets a user namespace of its own.
    pub fn has_user_namespace(&self) -> bool {
        self.value
            .pointer("/linux/namespaces")
            .and_then(Value::as_array)
            .is_some_and(|ns| {
                ns.iter()
                    .any(|n| n.get("type").and_then(Value::as_str) == Some("user"))
            })
    }

    /// Whether the container has CAP_SYS_ADMIN in its bounding set: what privileged
    /// containers (and those given SYS_ADMIN) have, and the test of `env_requests =
    /// "privileged"` (as NVIDIA's toolkit tests it).
    pub fn has_cap_sys_admin(&self) -> bool {
        self.value
            .pointer("/process/capabilities/bounding")
            .and_then(Value::as_array)
            .is_some_and(|caps| caps.iter().any(|c| c.as_str() == Some("CAP_SYS_ADMIN")))
    }

    /// Destinations of the spec's mounts.
    pub fn mount_destinations(&self) -> Vec<String> {
        self.value
            .pointer("/mounts")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|m| m.get("destination").and_then(Value::as_str))
                    .map(String::from)
                    .collect()
            })
            .unwrap_or_default()
    }

    /// The device nodes of `linux.devices` (char and block; FIFOs name no device).
    pub fn devices(&self) -> Vec<SpecDevice> {
        self.value
            .pointer("/linux/devices")
            .and_then(Value::as_array)
            .map(|a| {
                a.iter()
                    .filter_map(|d| {
                        let dev_type = match d.get("type").and_then(Value::as_str)? {
                            "c" | "u" => DevType::Char,
                            "b" => DevType::Block,
                            _ => return None,
                        };
                        let num = |key: &str| d.get(key)?.as_u64().and_then(|n| n.try_into().ok());
                        Some(SpecDevice {
                            path: d.get("path")?.as_str()?.into(),
                            dev_type,
                            major: num("major")?,
                            minor: num("minor")?,
                        })
                    })
                    .collect()
            })
            .unwrap_or_default()
    }

    /// Whether `linux.resources.devices` gives `grant` all its access, evaluating the rules
    /// the way runc does (see [`effective`]). Rules runc would reject allow nothing.
    pub fn allows(&self, grant: &Grant) -> bool {
        let rules = self.device_rules().unwrap_or_default();
        effective(&rules, grant.dev_type, grant.major, grant.minor)
            .allowed
            .contains(grant.access)
    }

    /// Applies our edit. Idempotent: a second application changes nothing.
    pub fn apply(&mut self, edit: &Edit<'_>) -> Result<(), SpecError> {
        let path = self.path.clone();
        let invalid = |reason: &str| SpecError::Invalid {
            path: path.clone(),
            reason: reason.into(),
        };
        let existing = self.device_paths();
        // In a user namespace runc cannot mknod, and binds the host file at the container's
        // path instead: the wrong node when the container's name is not the host's (VIRTUAL,
        // a dev_root other than /dev). So the host node is bind-mounted by path ourselves.
        let bind = self.has_user_namespace();
        let mounted = self.mount_destinations();
        let mut devices = Vec::new();
        let mut mounts = Vec::new();
        for d in edit.devices {
            let present = |paths: &[String]| paths.iter().any(|p| Path::new(p) == d.container_path);
            if present(&existing) || present(&mounted) {
                continue;
            }
            if bind {
                mounts.push(json!({
                    "destination": d.container_path,
                    "type": "bind",
                    "source": d.node.path,
                    "options": ["bind", "nosuid"],
                }));
                continue;
            }
            let typ = match d.node.dev_type {
                DevType::Char => LinuxDeviceType::C,
                DevType::Block => LinuxDeviceType::B,
            };
            let device = LinuxDeviceBuilder::default()
                .path(d.container_path.clone())
                .typ(typ)
                .major(i64::from(d.node.major))
                .minor(i64::from(d.node.minor))
                .file_mode(d.node.mode)
                .uid(d.node.uid)
                .gid(d.node.gid)
                .build()
                .map_err(|e| invalid(&e.to_string()))?;
            devices.push(to_value(&device));
        }
        let mut rules = Vec::new();
        for grant in crate::node::devices::grants(edit.devices) {
            if self.allows(&grant) {
                continue;
            }
            let rule = LinuxDeviceCgroupBuilder::default()
                .allow(true)
                .typ(match grant.dev_type {
                    DevType::Char => LinuxDeviceType::C,
                    DevType::Block => LinuxDeviceType::B,
                })
                .major(i64::from(grant.major))
                .minor(i64::from(grant.minor))
                .access(grant.access.to_string())
                .build()
                .map_err(|e| invalid(&e.to_string()))?;
            rules.push(to_value(&rule));
        }
        let mut hooks = vec![(
            "createRuntime",
            edit.hook.entry("create-runtime").map_err(|e| invalid(&e))?,
        )];
        if edit.cleanup == Cleanup::PoststopHook {
            hooks.push((
                "poststop",
                edit.hook.entry("poststop").map_err(|e| invalid(&e))?,
            ));
        }

        let root = self.value.as_object_mut().expect("checked at parse");
        let linux = object_at(root, "linux").ok_or_else(|| invalid("linux is not an object"))?;
        array_at(linux, "devices")
            .ok_or_else(|| invalid("linux.devices is not an array"))?
            .extend(devices);
        if !mounts.is_empty() {
            let root = self.value.as_object_mut().expect("checked at parse");
            array_at(root, "mounts")
                .ok_or_else(|| invalid("mounts is not an array"))?
                .extend(mounts);
        }
        let root = self.value.as_object_mut().expect("checked at parse");
        let linux = object_at(root, "linux").ok_or_else(|| invalid("linux is not an object"))?;
        let resources = object_at(linux, "resources")
            .ok_or_else(|| invalid("linux.resources is not an object"))?;
        array_at(resources, "devices")
            .ok_or_else(|| invalid("linux.resources.devices is not an array"))?
            .extend(rules);

        let root = self.value.as_object_mut().expect("checked at parse");
        let hooks_obj =
            object_at(root, "hooks").ok_or_else(|| invalid("hooks is not an object"))?;
        for (stage, hook) in hooks {
            let list = array_at(hooks_obj, stage)
                .ok_or_else(|| invalid(&format!("hooks.{stage} is not an array")))?;
            let ours = to_value(&hook);
            if !list.iter().any(|h| same_hook(h, &ours)) {
                list.push(ours);
            }
        }

        let root = self.value.as_object_mut().expect("checked at parse");
        let process =
            object_at(root, "process").ok_or_else(|| invalid("process is not an object"))?;
        let env = array_at(process, "env").ok_or_else(|| invalid("process.env is not an array"))?;
        for entry in &edit.env {
            let key = entry.split_once('=').map_or(entry.as_str(), |(k, _)| k);
            let prefix = format!("{key}=");
            env.retain(|e| !e.as_str().is_some_and(|s| s.starts_with(&prefix)));
            env.push(Value::String(entry.clone()));
        }
        Ok(())
    }

    /// Writes the spec back atomically: a temporary file in the bundle, then rename.
    pub fn write_atomic(&self) -> Result<(), SpecError> {
        let write_error = |source| SpecError::Write {
            path: self.path.clone(),
            source,
        };
        let dir = self.path.parent().unwrap_or(Path::new("."));
        let mut tmp = tempfile::Builder::new()
            .prefix(".config.json.")
            .tempfile_in(dir)
            .map_err(write_error)?;
        // One write: serde_json writes token by token, a syscall each on an unbuffered file
        // (that alone cost the shim 0.7 ms on a 4 KiB spec).
        let bytes = serde_json::to_vec(&self.value).map_err(|e| write_error(e.into()))?;
        tmp.write_all(&bytes).map_err(write_error)?;
        // Keep the mode of the original (engines write it 0644 or 0600).
        if let Ok(meta) = std::fs::metadata(&self.path) {
            tmp.as_file()
                .set_permissions(meta.permissions())
                .map_err(write_error)?;
        }
        tmp.persist(&self.path).map_err(|e| write_error(e.error))?;
        Ok(())
    }
}

/// A device node of `linux.devices`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SpecDevice {
    /// Path inside the container.
    pub path: PathBuf,
    pub dev_type: DevType,
    pub major: u32,
    pub minor: u32,
}

/// What the shim (or the precreate hook) adds to an NPU container's spec.
pub struct Edit<'a> {
    pub devices: &'a [ContainerDevice],
    pub hook: &'a HookCommand,
    /// `KEY=VALUE` entries to set in `process.env` (replacing earlier values of KEY).
    pub env: Vec<String>,
    pub cleanup: Cleanup,
}

/// Who removes a container's grants and record when it is deleted.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cleanup {
    /// The shim, after the runtime's `delete` (or a failed `create`): no poststop process.
    Shim,
    /// Our poststop hook, where no shim runs on the way out (Podman's precreate stage, or a
    /// foreground `run` that the runtime ends and deletes by itself).
    PoststopHook,
}

/// How the runtime is to run our hook.
pub struct HookCommand {
    pub path: PathBuf,
    /// The hook's environment (hooks do not inherit the runtime's).
    pub env: Vec<String>,
}

impl HookCommand {
    fn entry(&self, stage: &str) -> Result<Hook, String> {
        HookBuilder::default()
            .path(self.path.clone())
            .args(vec!["npu-container-hook".to_string(), stage.to_string()])
            .env(self.env.clone())
            .build()
            .map_err(|e| e.to_string())
    }
}

fn to_value<T: serde::Serialize>(v: &T) -> Value {
    serde_json::to_value(v).expect("oci-spec types serialize")
}

/// The object under `key`, created if absent or null; `None` if it is something else.
fn object_at<'a>(obj: &'a mut Map<String, Value>, key: &str) -> Option<&'a mut Map<String, Value>> {
    let slot = obj.entry(key).or_insert_with(|| json!({}));
    if slot.is_null() {
        *slot = json!({});
    }
    slot.as_object_mut()
}

/// The array under `key`, created if absent or null; `None` if it is something else.
fn array_at<'a>(obj: &'a mut Map<String, Value>, key: &str) -> Option<&'a mut Vec<Value>> {
    let slot = obj.entry(key).or_insert_with(|| json!([]));
    if slot.is_null() {
        *slot = json!([]);
    }
    slot.as_array_mut()
}

/// Our hook is already there if an entry runs the same stage of a binary with our name.
fn same_hook(existing: &Value, ours: &Value) -> bool {
    let name = |v: &Value| {
        v.get("path")
            .and_then(Value::as_str)
            .and_then(|p| Path::new(p).file_name().map(|n| n.to_os_string()))
    };
    let stage = |v: &Value| {
        v.pointer("/args/1")
            .and_then(Value::as_str)
            .map(String::from)
    };
    name(existing) == name(ours) && stage(existing) == stage(ours)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::devices::DeviceNode;

    fn device(path: &str, major: u32, minor: u32) -> ContainerDevice {
        ContainerDevice {
            container_path: path.into(),
            node: DeviceNode {
                name: path.trim_start_matches("/dev/").into(),
                path: path.into(),
                dev_type: DevType::Char,
                major,
                minor,
                mode: 0o660,
                uid: 0,
                gid: 44,
            },
        }
    }

    fn hook() -> HookCommand {
        HookCommand {
            path: "/usr/bin/npu-container-hook".into(),
            env: vec!["PATH=/usr/bin:/bin".into()],
        }
    }

    const INPUT: &str = r#"{
        "ociVersion": "1.0.2",
        "process": {"args": ["sh"], "env": ["PATH=/bin", "ASCEND_VISIBLE_DEVICES=1", "ASCEND_DOCKER_RUNTIME=no"]},
        "root": {"path": "rootfs"},
        "linux": {"resources": {"devices": [{"allow": false, "access": "rwm"}]}, "namespaces": []},
        "vendorExtension": {"keep": ["me"]}
    }"#;

    #[test]
    fn edit_matches_golden_json() {
        let mut spec = Spec::parse(INPUT.as_bytes(), "config.json".into()).unwrap();
        let devices = [
            device("/dev/davinci1", 240, 1),
            device("/dev/davinci_manager", 241, 0),
        ];
        let h = hook();
        let edit = Edit {
            devices: &devices,
            hook: &h,
            env: vec!["ASCEND_DOCKER_RUNTIME=True".into()],
            cleanup: Cleanup::PoststopHook,
        };
        let mut behind_shim = Spec::parse(INPUT.as_bytes(), "config.json".into()).unwrap();
        spec.apply(&edit).unwrap();
        let golden: Value = serde_json::from_str(
            r#"{
            "ociVersion": "1.0.2",
            "process": {"args": ["sh"], "env": ["PATH=/bin", "ASCEND_VISIBLE_DEVICES=1", "ASCEND_DOCKER_RUNTIME=True"]},
            "root": {"path": "rootfs"},
            "linux": {
                "resources": {"devices": [
                    {"allow": false, "access": "rwm"},
                    {"allow": true, "type": "c", "major": 240, "minor": 1, "access": "rwm"},
                    {"allow": true, "type": "c", "major": 241, "minor": 0, "access": "rwm"}
                ]},
                "namespaces": [],
                "devices": [
                    {"path": "/dev/davinci1", "type": "c", "major": 240, "minor": 1, "fileMode": 432, "uid": 0, "gid": 44},
                    {"path": "/dev/davinci_manager", "type": "c", "major": 241, "minor": 0, "fileMode": 432, "uid": 0, "gid": 44}
                ]
            },
            "hooks": {
                "createRuntime": [{"path": "/usr/bin/npu-container-hook", "args": ["npu-container-hook", "create-runtime"], "env": ["PATH=/usr/bin:/bin"]}],
                "poststop": [{"path": "/usr/bin/npu-container-hook", "args": ["npu-container-hook", "poststop"], "env": ["PATH=/usr/bin:/bin"]}]
            },
            "vendorExtension": {"keep": ["me"]}
        }"#,
        )
        .unwrap();
        assert_eq!(
            spec.value,
            golden,
            "{}",
            serde_json::to_string_pretty(&spec.value).unwrap()
        );

        // A second application changes nothing.
        spec.apply(&edit).unwrap();
        assert_eq!(spec.value, golden);

        // Behind the shim, which cleans up on delete: the same without a poststop entry.
        behind_shim
            .apply(&Edit {
                cleanup: Cleanup::Shim,
                ..edit
            })
            .unwrap();
        let mut expected = golden;
        expected["hooks"]
            .as_object_mut()
            .unwrap()
            .remove("poststop");
        assert_eq!(behind_shim.value, expected);
    }

    #[test]
    fn existing_entries_are_respected() {
        let mut spec = Spec::parse(
            br#"{"process": {}, "root": {"path": "/r"}, "linux": {
                "devices": [{"path": "/dev/davinci1", "type": "c", "major": 240, "minor": 1}],
                "resources": {"devices": [{"allow": true, "access": "rwm"}]}},
              "hooks": {"createRuntime": [{"path": "/opt/x/npu-container-hook", "args": ["npu-container-hook", "create-runtime"]}]}}"#,
            "c".into(),
        )
        .unwrap();
        let devices = [device("/dev/davinci1", 240, 1)];
        let h = hook();
        spec.apply(&Edit {
            devices: &devices,
            hook: &h,
            env: vec![],
            cleanup: Cleanup::PoststopHook,
        })
        .unwrap();
        assert_eq!(spec.device_paths(), ["/dev/davinci1"]);
        // Allowed already by the allow-all rule: no extra rule.
        assert_eq!(
            spec.value
                .pointer("/linux/resources/devices")
                .unwrap()
                .as_array()
                .unwrap()
                .len(),
            1
        );
        assert_eq!(
            spec.value
                .pointer("/hooks/createRuntime")
                .unwrap()
                .as_array()
                .unwrap()
                .len(),
            1
        );
        assert_eq!(
            spec.value
                .pointer("/hooks/poststop")
                .unwrap()
                .as_array()
                .unwrap()
                .len(),
            1
        );
    }

    #[test]
    fn rule_evaluation_follows_runc() {
        let g = Grant {
            dev_type: DevType::Char,
            major: 240,
            minor: 1,
            access: Access::ALL,
        };
        let spec = |rules: &str| {
            Spec::parse(
                format!(r#"{{"linux": {{"resources": {{"devices": {rules}}}}}}}"#).as_bytes(),
                "c".into(),
            )
            .unwrap()
        };
        assert!(!spec("[]").allows(&g));
        assert!(spec(r#"[{"allow": true, "access": "rwm"}]"#).allows(&g));
        assert!(
            spec(r#"[{"allow": true, "type": "c", "major": 240, "access": "rwm"}]"#).allows(&g)
        );
        assert!(
            !spec(r#"[{"allow": true, "type": "c", "major": 240, "minor": 1, "access": "rw"}]"#)
                .allows(&g)
        );
        assert!(!spec(r#"[{"allow": true, "type": "c", "major": 240, "minor": 1, "access": "rwm"}, {"allow": false, "access": "rwm"}]"#).allows(&g));
        assert!(
            !spec(r#"[{"allow": true, "type": "b", "major": 240, "minor": 1, "access": "rwm"}]"#)
                .allows(&g)
        );
    }

    #[test]
    fn malformed_specs_are_named() {
        for bad in [
            &b"not json"[..],
            b"[1]",
            b"{\"process\": {\"env\": \"x\"}}",
            b"{\"process\": {\"env\": [1]}}",
        ] {
            let r = Spec::parse(bad, "/b/config.json".into()).and_then(|s| s.env().map(drop));
            let e = r.unwrap_err().to_string();
            assert!(e.contains("/b/config.json"), "{e}");
        }
        let mut s = Spec::parse(br#"{"linux": {"devices": {}}}"#, "/b/config.json".into()).unwrap();
        let h = hook();
        let e = s.apply(&Edit {
            devices: &[device("/dev/davinci0", 240, 0)],
            hook: &h,
            env: vec![],
            cleanup: Cleanup::Shim,
        });
        assert!(e.unwrap_err().to_string().contains("linux.devices"));
    }
}
