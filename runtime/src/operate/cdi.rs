//! `npu-ctk cdi generate`: a Container Device Interface spec for this host's devices of one
//! profile, for engines that inject devices themselves (`podman run --device
//! ascend.com/npu=1`, `kunlunxin.com/xpu=0`): one CDI kind per profile.
//!
//! One device per chip (named by index) and `all`. Each device adds its node and the
//! profile's per-device variable (`ASCEND_CDI_NPU_<N>=<N>`; CDI merges env entries, so several
//! devices accumulate); the common edits add the management nodes, the driver mounts of the
//! profile's default lists (read-only), and our hook for createRuntime and poststop, so the
//! guard confines the container to exactly the devices it was given. `NODRV` tells the hook
//! the engine already did the mounts (a profile without an options variable leaves the
//! mounts to the hook).
use std::path::Path;

use serde_json::{Value, json};

use crate::{
    node::config::Config,
    node::devices::{DeviceNode, HostDevices},
    operate::error::Error,
    start::mounts,
};

/// CDI version written: the newest one Podman 4.x reads with every field used here.
pub const CDI_VERSION: &str = "0.5.0";

fn node(container_path: &Path, n: &DeviceNode) -> Value {
    json!({
        "path": container_path,
        "hostPath": n.path,
        "type": n.dev_type.letter().to_string(),
        "major": n.major,
        "minor": n.minor,
        "fileMode": n.mode,
        "permissions": "rwm",
        "uid": n.uid,
        "gid": n.gid,
    })
}

/// The CDI spec for this host's devices of `profile`, of kind `kind` (default: the
/// profile's). `hook` is the npu-container-hook binary, `hook_env` its environment.
pub fn generate(
    config: &Config,
    profile: &str,
    kind: Option<&str>,
    hook: &Path,
    hook_env: &[String],
) -> Result<Value, Error> {
    let host = HostDevices::discover(config)?;
    let family = host
        .family(profile)
        .ok_or_else(|| Error::UnknownProfile(profile.to_string()))?;
    let p = &family.profile;
    if let Some(path) = family.missing_management.first() {
        return Err(
            crate::node::devices::DeviceError::MissingManagement { path: path.clone() }.into(),
        );
    }
    let dev = Path::new("/dev");
    let mut devices: Vec<Value> = family
        .chips
        .iter()
        .map(|(i, n)| {
            json!({
                "name": i.to_string(),
                "containerEdits": {
                    "deviceNodes": [node(&dev.join(&n.name), n)],
                    "env": [format!("{}{i}={i}", p.cdi_env_prefix)],
                },
            })
        })
        .collect();
    devices.push(json!({
        "name": "all",
        "containerEdits": {
            "deviceNodes": family.chips.values().map(|n| node(&dev.join(&n.name), n)).collect::<Vec<_>>(),
            "env": [format!("{}=all", p.request_env)],
        },
    }));
    // The engine mounts the driver files when the hook can be told not to (NODRV); a family
    // without an options variable gets them from the hook.
    let mut mount_list = Vec::new();
    let mut env = Vec::new();
    if let Some(options) = &p.options_env {
        env.push(format!("{options}=NODRV"));
        for path in mounts::read_lists(&config.mount_list_dir, &p.mount_lists, false)? {
            let host_path = config
                .driver_root
                .join(path.strip_prefix("/").unwrap_or(&path));
            if host_path.exists() {
                mount_list.push(json!({
                    "hostPath": host_path,
                    "containerPath": path,
                    "options": ["ro", "nosuid", "nodev", "bind"],
                }));
            }
        }
    }
    let hook_entry = |hook_name: &str, stage: &str| json!({"hookName": hook_name, "path": hook, "args": ["npu-container-hook", stage], "env": hook_env});
    Ok(json!({
        "cdiVersion": CDI_VERSION,
        "kind": kind.unwrap_or(&p.cdi_kind),
        "devices": devices,
        "containerEdits": {
            "env": env,
            "deviceNodes": family.management.iter().map(|n| node(&dev.join(&n.name), n)).collect::<Vec<_>>(),
            "mounts": mount_list,
            "hooks": [hook_entry("createRuntime", "create-runtime"), hook_entry("poststop", "poststop")],
        },
    }))
}
