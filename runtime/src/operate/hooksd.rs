//! `npu-ctk hook install`: OCI `hooks.d` files for Podman and CRI-O (hook-only mode).
//!
//! Three files, one per stage (a hooks.d entry has one argument list for all its stages):
//! `precreate` writes the grant into the spec (the only way to grant on cgroup v2 without the
//! shim), `createRuntime` mounts and enforces, `poststop` cleans up. They match every
//! container (`always`): the hook itself decides from `ASCEND_VISIBLE_DEVICES`, so no
//! annotation can be left off to skip isolation, and non-NPU containers cost one quick exec.
use std::path::{Path, PathBuf};

#[derive(Debug, thiserror::Error)]
#[error("cannot write {path}: {source}")]
pub struct HooksError {
    pub path: PathBuf,
    pub source: std::io::Error,
}

/// The files written, as (file name, stage, hook argument).
const STAGES: [(&str, &str, &str); 3] = [
    (
        "npu-container-runtime-precreate.json",
        "precreate",
        "precreate",
    ),
    (
        "npu-container-runtime-createruntime.json",
        "createRuntime",
        "create-runtime",
    ),
    (
        "npu-container-runtime-poststop.json",
        "poststop",
        "poststop",
    ),
];

/// Writes the hook files into `dir`; returns their paths.
pub fn install(dir: &Path, hook: &Path, env: &[String]) -> Result<Vec<PathBuf>, HooksError> {
    std::fs::create_dir_all(dir).map_err(|source| HooksError {
        path: dir.into(),
        source,
    })?;
    let mut written = Vec::new();
    for (file, stage, arg) in STAGES {
        let path = dir.join(file);
        let json = serde_json::json!({
            "version": "1.0.0",
            "hook": {"path": hook, "args": ["npu-container-hook", arg], "env": env},
            "when": {"always": true},
            "stages": [stage],
        });
        let text = serde_json::to_string_pretty(&json).expect("JSON serializes") + "\n";
        std::fs::write(&path, text).map_err(|source| HooksError {
            path: path.clone(),
            source,
        })?;
        written.push(path);
    }
    Ok(written)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn one_file_per_stage() {
        let dir = tempfile::tempdir().unwrap();
        let files = install(
            dir.path(),
            Path::new("/usr/bin/npu-container-hook"),
            &["PATH=/bin".into()],
        )
        .unwrap();
        assert_eq!(files.len(), 3);
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&files[1]).unwrap()).unwrap();
        assert_eq!(v["stages"], serde_json::json!(["createRuntime"]));
        assert_eq!(
            v["hook"]["args"],
            serde_json::json!(["npu-container-hook", "create-runtime"])
        );
        assert_eq!(v["when"]["always"], true);
    }
}
