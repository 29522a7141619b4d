//! Per-container records under `state_dir`: what was granted and enforced, so `poststop`,
//! `update` and the operator tool can act without the container's pid.
use std::{
    collections::BTreeSet,
    io::Write as _,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use serde::{Deserialize, Serialize};

use crate::node::{
    rules::Grant,
    trust::{self, TrustError},
};

#[derive(Debug, thiserror::Error)]
pub enum StateError {
    #[error("invalid container id {0:?}")]
    BadId(String),
    #[error("cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("corrupt record {path}: {source}")]
    Corrupt {
        path: PathBuf,
        source: serde_json::Error,
    },
    #[error("state_dir: {0}")]
    Untrusted(#[from] TrustError),
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Record {
    pub id: String,
    pub bundle: PathBuf,
    /// Device paths inside the container.
    pub devices: Vec<PathBuf>,
    pub grants: Vec<Grant>,
    pub enforced: Enforced,
    /// Grants taken away from the running container (`npu-ctk device revoke`).
    #[serde(default, skip_serializing_if = "Vec::is_empty")]
    pub revoked: Vec<Grant>,
    /// The container names no NPU and is confined to none (it could have reached one).
    #[serde(default, skip_serializing_if = "std::ops::Not::not")]
    pub confined: bool,
    /// The request variables that did not count (`env_requests`), and why.
    #[serde(default, skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

/// What was enforced for a container: enough to release it later without its pid.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct Enforced {
    /// Guard program version the container is registered with (v2 layer), if any.
    pub guard_version: Option<String>,
    pub cgroup_id: Option<u64>,
    pub unified_dir: Option<PathBuf>,
    pub devices_v1_dir: Option<PathBuf>,
}

impl Enforced {
    /// [`Self::gone`] from the recorded directory alone, as the hook saw it: `Some(false)`
    /// while it holds our cgroup, `Some(true)` when it holds another one (a new cgroup of the
    /// same name) or is missing below a parent that is in the cgroup2 tree here, `None` when
    /// the path means nothing in this mount namespace (the caller then asks by id). One or
    /// two `stat`s. A v1-only record is judged by its path, as gc judges it.
    pub fn gone_at_recorded_path(&self) -> Option<bool> {
        match (self.cgroup_id, &self.unified_dir) {
            (Some(id), Some(dir)) => match std::fs::metadata(dir) {
                Ok(m) => Some(m.ino() != id),
                Err(_) => {
                    let parent = dir.parent()?;
                    let cgroup2 = nix::sys::statfs::statfs(parent).is_ok_and(|s| {
                        s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC
                    });
                    cgroup2.then_some(true)
                }
            },
            (None, None) => Some(self.devices_v1_dir.as_ref().is_some_and(|d| !d.exists())),
            _ => None,
        }
    }

    /// Whether the container's cgroups are gone, so nothing of it can run any more. `live`
    /// holds the ids of the unified tree's cgroups (None on a v1-only host): ids are the same
    /// in every mount namespace, while the recorded paths are as the hook saw them (maybe in
    /// another namespace), so an id is judged by id.
    pub fn gone(&self, live: Option<&BTreeSet<u64>>) -> bool {
        let path_gone = |dir: &Option<PathBuf>| dir.as_ref().is_some_and(|d| !d.exists());
        match (self.cgroup_id, live) {
            (Some(id), Some(live)) => !live.contains(&id),
            _ => path_gone(&self.unified_dir) || path_gone(&self.devices_v1_dir),
        }
    }
}

/// Temporary record files are `.record.<writer pid>.<random>`.
const TEMP_PREFIX: &str = ".record.";

/// Removes temporary record files whose writer is no longer running (a hook killed while
/// writing); returns their names.
pub fn remove_orphaned_temps(state_dir: &Path) -> Vec<String> {
    let mut removed = Vec::new();
    for entry in std::fs::read_dir(state_dir).into_iter().flatten().flatten() {
        let name = entry.file_name().to_string_lossy().into_owned();
        let Some(pid) = name
            .strip_prefix(TEMP_PREFIX)
            .and_then(|rest| rest.split('.').next())
            .and_then(|pid| pid.parse::<u32>().ok())
        else {
            continue;
        };
        if !Path::new(&format!("/proc/{pid}")).exists()
            && std::fs::remove_file(entry.path()).is_ok()
        {
            removed.push(name);
        }
    }
    removed
}

/// The record file of container `id`; ids are runc's (`[A-Za-z0-9_+.-]`, not `.`/`..`).
pub fn record_path(state_dir: &Path, id: &str) -> Result<PathBuf, StateError> {
    let valid = !id.is_empty()
        && id != "."
        && id != ".."
        && id.len() <= 1024
        && id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || "_+.-".contains(c));
    if !valid {
        return Err(StateError::BadId(id.into()));
    }
    Ok(state_dir.join(format!("{id}.json")))
}

/// Writes the record atomically (temporary file + rename).
pub fn write(state_dir: &Path, record: &Record) -> Result<(), StateError> {
    write_json(state_dir, &record_path(state_dir, &record.id)?, record)
}

/// Serializes `value` into `path` (inside `dir`) atomically: a temporary file, then rename.
fn write_json(dir: &Path, path: &Path, value: &impl Serialize) -> Result<(), StateError> {
    let io = |op| {
        let path = path.to_path_buf();
        move |source| StateError::Io { op, path, source }
    };
    // Someone else could have made it first, to read or plant records: refuse such a one.
    trust::private_dir(dir)?;
    // The writer's pid in the name lets `gc` tell a dead writer's leftover from work in progress.
    let mut tmp = tempfile::Builder::new()
        .prefix(&format!("{TEMP_PREFIX}{}.", std::process::id()))
        .tempfile_in(dir)
        .map_err(io("create"))?;
    // One write: serde_json writes token by token, a syscall each on an unbuffered file.
    let bytes = serde_json::to_vec(value).map_err(|e| io("write")(e.into()))?;
    tmp.write_all(&bytes).map_err(io("write"))?;
    tmp.persist(path).map_err(|e| io("write")(e.error))?;
    Ok(())
}

/// Node-wide facts kept beside the records, in `state_dir/node/<name>.json` (never read as
/// records: `list` reads only the `*.json` files at the top).
fn node_path(state_dir: &Path, name: &str) -> PathBuf {
    state_dir.join("node").join(format!("{name}.json"))
}

/// Writes the node fact `name` atomically.
pub fn write_node(state_dir: &Path, name: &str, value: &impl Serialize) -> Result<(), StateError> {
    write_json(&state_dir.join("node"), &node_path(state_dir, name), value)
}

/// Reads the node fact `name`; `None` if there is none.
pub fn read_node<T: serde::de::DeserializeOwned>(
    state_dir: &Path,
    name: &str,
) -> Result<Option<T>, StateError> {
    // Only what root alone can have written there counts.
    if !trust::check_private_dir(&state_dir.join("node"))? {
        return Ok(None);
    }
    let path = node_path(state_dir, name);
    match read_nofollow(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| StateError::Corrupt { path, source }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StateError::Io {
            op: "read",
            path,
            source,
        }),
    }
}

/// Reads a file we wrote, never following a symlink to something we did not.
fn read_nofollow(path: &Path) -> std::io::Result<Vec<u8>> {
    use std::{io::Read, os::unix::fs::OpenOptionsExt};
    let mut bytes = Vec::new();
    std::fs::OpenOptions::new()
        .read(true)
        .custom_flags(libc::O_NOFOLLOW)
        .open(path)?
        .read_to_end(&mut bytes)?;
    Ok(bytes)
}

/// This boot's id (`/proc/sys/kernel/random/boot_id`): facts that hold until a reboot carry
/// it, so a state_dir that survives reboots does not keep them longer.
pub fn boot_id() -> String {
    std::fs::read_to_string("/proc/sys/kernel/random/boot_id")
        .map(|s| s.trim().to_string())
        .unwrap_or_default()
}

/// Reads the record of `id`; `None` if there is none.
pub fn read(state_dir: &Path, id: &str) -> Result<Option<Record>, StateError> {
    let path = record_path(state_dir, id)?;
    match read_nofollow(&path) {
        Ok(bytes) => serde_json::from_slice(&bytes)
            .map(Some)
            .map_err(|source| StateError::Corrupt { path, source }),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => Ok(None),
        Err(source) => Err(StateError::Io {
            op: "read",
            path,
            source,
        }),
    }
}

/// Every record in `state_dir`, sorted by id (a missing directory has none). Unreadable or
/// corrupt files are returned as errors next to the good ones.
pub fn list(state_dir: &Path) -> Vec<Result<Record, StateError>> {
    let mut out = Vec::new();
    let Ok(entries) = std::fs::read_dir(state_dir) else {
        return out;
    };
    let mut ids: Vec<String> = entries
        .flatten()
        .filter_map(|e| {
            e.file_name()
                .to_str()
                .and_then(|n| n.strip_suffix(".json"))
                .filter(|n| !n.starts_with('.'))
                .map(String::from)
        })
        .collect();
    ids.sort();
    for id in ids {
        match read(state_dir, &id) {
            Ok(Some(r)) => out.push(Ok(r)),
            Ok(None) => {}
            Err(e) => out.push(Err(e)),
        }
    }
    out
}

/// Removes the record of `id` (absent is fine).
pub fn remove(state_dir: &Path, id: &str) -> Result<(), StateError> {
    let path = record_path(state_dir, id)?;
    match std::fs::remove_file(&path) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(StateError::Io {
            op: "remove",
            path,
            source: e,
        }),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::node::rules::{Access, DevType};

    #[test]
    fn round_trip_and_ids() {
        let dir = tempfile::tempdir().unwrap();
        let record = Record {
            id: "abc_1.2-x".into(),
            bundle: "/b".into(),
            devices: vec!["/dev/davinci1".into()],
            grants: vec![Grant {
                dev_type: DevType::Char,
                major: 240,
                minor: 1,
                access: Access::ALL,
            }],
            enforced: Enforced {
                guard_version: Some("v".into()),
                cgroup_id: Some(7),
                unified_dir: Some("/sys/fs/cgroup/x".into()),
                devices_v1_dir: None,
            },
            revoked: vec![],
            confined: false,
            refused: None,
        };
        write(dir.path(), &record).unwrap();
        let text = std::fs::read_to_string(dir.path().join("abc_1.2-x.json")).unwrap();
        assert!(text.contains("\"c 240:1 rwm\""), "{text}");
        assert_eq!(read(dir.path(), "abc_1.2-x").unwrap(), Some(record));
        assert_eq!(list(dir.path()).len(), 1);
        // A dead writer's temporary file goes, a live one's stays.
        std::fs::write(dir.path().join(".record.999999999.abc"), "{").unwrap();
        let live = format!(".record.{}.def", std::process::id());
        std::fs::write(dir.path().join(&live), "{").unwrap();
        assert_eq!(remove_orphaned_temps(dir.path()), [".record.999999999.abc"]);
        assert!(dir.path().join(&live).exists());
        remove(dir.path(), "abc_1.2-x").unwrap();
        remove(dir.path(), "abc_1.2-x").unwrap();
        assert!(list(dir.path()).is_empty());
        assert_eq!(read(dir.path(), "abc_1.2-x").unwrap(), None);
        for bad in ["", ".", "..", "a/b", "../x", "a b", "é"] {
            assert!(read(dir.path(), bad).is_err(), "{bad:?}");
        }
        std::fs::write(dir.path().join("bad.json"), "{").unwrap();
        assert!(
            read(dir.path(), "bad")
                .unwrap_err()
                .to_string()
                .contains("bad.json")
        );
    }
}
