//! `npu-ctk runtime configure|unconfigure`: registering the shim with container engines.
//!
//! Every edit keeps the rest of the file as the operator wrote it (JSON key order, TOML
//! comments and layout), is idempotent (a second run changes nothing and says so), backs the
//! old file up next to it, and replaces it atomically. A file that does not parse is an error
//! naming it, and is left untouched.
use std::{
    io::Write as _,
    path::{Path, PathBuf},
};

use toml_edit::{DocumentMut, Item, Table, value};

/// The name engines know our runtime by (`docker run --runtime=npu`).
pub const RUNTIME_NAME: &str = "npu";
/// CRI-O drop-in file we own entirely.
const CRIO_DROP_IN: &str = "99-npu-container-runtime.conf";

#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Engine {
    Docker,
    Containerd,
    Podman,
    Crio,
}

impl Engine {
    pub fn default_config(self) -> &'static str {
        match self {
            Self::Docker => "/etc/docker/daemon.json",
            Self::Containerd => "/etc/containerd/config.toml",
            Self::Podman => "/etc/containers/containers.conf",
            Self::Crio => "/etc/crio/crio.conf.d",
        }
    }

    /// The engine's own program, whose presence says the engine is installed.
    pub fn program(self) -> &'static str {
        match self {
            Self::Docker => "dockerd",
            Self::Containerd => "containerd",
            Self::Podman => "podman",
            Self::Crio => "crio",
        }
    }

    /// Whether the engine is installed: its program on PATH or in the system's bin
    /// directories (doctor may run with a short PATH).
    pub fn installed(self) -> bool {
        crate::start::shim::search_dirs()
            .iter()
            .any(|dir| dir.join(self.program()).is_file())
    }

    /// The file an edit touches: for CRI-O, our drop-in inside the given directory.
    fn file(self, config: &Path) -> PathBuf {
        match self {
            Self::Crio => config.join(CRIO_DROP_IN),
            _ => config.to_path_buf(),
        }
    }
}

#[derive(Debug, thiserror::Error)]
pub enum EngineError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{path} is not valid {format}: {reason}; left untouched")]
    Malformed {
        path: PathBuf,
        format: &'static str,
        reason: String,
    },
    #[error("{path}: {reason}; left untouched")]
    Unexpected { path: PathBuf, reason: String },
    #[error("cannot write {path}: {source}")]
    Write {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// What a configure/unconfigure did (or, with dry run, would do).
#[derive(Debug)]
pub struct Outcome {
    pub path: PathBuf,
    pub changed: bool,
    /// Unified diff of the change (empty when nothing changes).
    pub diff: String,
    pub backup: Option<PathBuf>,
}

impl Outcome {
    /// What `npu-ctk runtime configure|unconfigure` prints: `added` says which of the two ran.
    pub fn report(&self, added: bool, dry_run: bool) -> String {
        let path = self.path.display();
        if !self.changed {
            let state = if added {
                "configured"
            } else {
                "without the npu runtime"
            };
            return format!("{path}: already {state}; no change");
        }
        if dry_run {
            return format!(
                "{path}: would change (dry run, nothing written):\n{}",
                self.diff
            );
        }
        let mut lines = vec![format!("{path}: updated")];
        if let Some(b) = &self.backup {
            lines.push(format!("previous version kept in {}", b.display()));
        }
        lines.push("restart the engine (or reload its configuration) to apply".into());
        lines.join("\n")
    }
}

pub struct Request<'a> {
    pub engine: Engine,
    pub config: &'a Path,
    /// Path of `npu-container-runtime` to register.
    pub runtime_path: &'a Path,
    pub set_as_default: bool,
    pub dry_run: bool,
}

/// Adds (`add = true`) or removes our runtime from the engine's configuration.
pub fn apply(req: &Request<'_>, add: bool) -> Result<Outcome, EngineError> {
    let path = req.engine.file(req.config);
    let old = match std::fs::read_to_string(&path) {
        Ok(text) => Some(text),
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => None,
        Err(source) => return Err(EngineError::Read { path, source }),
    };
    let text = old.as_deref().unwrap_or_default();
    let new = match req.engine {
        Engine::Docker => docker(text, &path, req, add)?,
        Engine::Containerd => containerd(text, &path, req, add)?,
        Engine::Podman => podman(text, &path, req, add)?,
        Engine::Crio => crio(text, &path, req, add)?,
    };
    let changed = match (&old, &new) {
        (Some(o), Some(n)) => o != n,
        (None, None) => false,
        _ => true,
    };
    let diff = similar::TextDiff::from_lines(text, new.as_deref().unwrap_or_default())
        .unified_diff()
        .header(
            &format!("{} (current)", path.display()),
            &format!("{} (new)", path.display()),
        )
        .to_string();
    let mut outcome = Outcome {
        path: path.clone(),
        changed,
        diff: if changed { diff } else { String::new() },
        backup: None,
    };
    if !changed || req.dry_run {
        return Ok(outcome);
    }
    let write_error = |source| EngineError::Write {
        path: path.clone(),
        source,
    };
    if old.is_some() {
        let backup = PathBuf::from(format!("{}.npu-ctk.bak", path.display()));
        std::fs::copy(&path, &backup).map_err(write_error)?;
        outcome.backup = Some(backup);
    }
    match new {
        Some(text) => write_atomic(&path, &text).map_err(write_error)?,
        None => std::fs::remove_file(&path).map_err(write_error)?,
    }
    Ok(outcome)
}

fn write_atomic(path: &Path, text: &str) -> std::io::Result<()> {
    let dir = path.parent().unwrap_or(Path::new("/"));
    std::fs::create_dir_all(dir)?;
    let mut tmp = tempfile::Builder::new()
        .prefix(".npu-ctk.")
        .tempfile_in(dir)?;
    tmp.write_all(text.as_bytes())?;
    tmp.flush()?;
    if let Ok(meta) = std::fs::metadata(path) {
        tmp.as_file().set_permissions(meta.permissions())?;
    }
    tmp.persist(path).map_err(|e| e.error)?;
    Ok(())
}

fn docker(
    text: &str,
    path: &Path,
    req: &Request<'_>,
    add: bool,
) -> Result<Option<String>, EngineError> {
    let malformed = |reason: String| EngineError::Malformed {
        path: path.into(),
        format: "JSON",
        reason,
    };
    let mut doc: serde_json::Value = if text.trim().is_empty() {
        serde_json::json!({})
    } else {
        serde_json::from_str(text).map_err(|e| malformed(e.to_string()))?
    };
    let root = doc
        .as_object_mut()
        .ok_or_else(|| malformed("the top level is not an object".into()))?;
    if add {
        let runtimes = root
            .entry("runtimes")
            .or_insert_with(|| serde_json::json!({}))
            .as_object_mut()
            .ok_or_else(|| malformed("\"runtimes\" is not an object".into()))?;
        runtimes.insert(
            RUNTIME_NAME.into(),
            serde_json::json!({"path": req.runtime_path}),
        );
        if req.set_as_default {
            root.insert("default-runtime".into(), RUNTIME_NAME.into());
        }
    } else {
        if let Some(runtimes) = root.get_mut("runtimes").and_then(|r| r.as_object_mut()) {
            runtimes.shift_remove(RUNTIME_NAME);
            if runtimes.is_empty() {
                root.shift_remove("runtimes");
            }
        }
        if root.get("default-runtime").and_then(|v| v.as_str()) == Some(RUNTIME_NAME) {
            root.shift_remove("default-runtime");
        }
    }
    let mut out = serde_json::to_string_pretty(&doc).expect("JSON serializes");
    out.push('\n');
    // Leave a file we would only reformat alone.
    Ok(Some(if same_json(text, &doc) {
        text.to_string()
    } else {
        out
    }))
}

fn same_json(text: &str, doc: &serde_json::Value) -> bool {
    serde_json::from_str::<serde_json::Value>(text).is_ok_and(|old| &old == doc)
}

fn parse_toml(text: &str, path: &Path) -> Result<DocumentMut, EngineError> {
    text.parse::<DocumentMut>()
        .map_err(|e| EngineError::Malformed {
            path: path.into(),
            format: "TOML",
            reason: e.to_string(),
        })
}

/// The table at `keys`, created (implicitly, so no empty headers appear) when missing.
fn table_at<'a>(
    doc: &'a mut Table,
    keys: &[&str],
    path: &Path,
) -> Result<&'a mut Table, EngineError> {
    let mut t = doc;
    for key in keys {
        let item = t.entry(key).or_insert_with(|| {
            let mut new = Table::new();
            new.set_implicit(true);
            Item::Table(new)
        });
        t = item.as_table_mut().ok_or_else(|| EngineError::Unexpected {
            path: path.into(),
            reason: format!("{key} is not a table"),
        })?;
    }
    Ok(t)
}

/// The table of containerd's CRI runtimes for config `version` (2: containerd 1.x, 3: 2.x).
fn cri_section(version: i64, path: &Path) -> Result<&'static [&'static str], EngineError> {
    match version {
        2 => Ok(&["plugins", "io.containerd.grpc.v1.cri", "containerd"]),
        3 => Ok(&["plugins", "io.containerd.cri.v1.runtime", "containerd"]),
        other => Err(EngineError::Unexpected {
            path: path.into(),
            reason: format!("config version {other} is not supported (2 or 3)"),
        }),
    }
}

/// What containerd's config says about the CRI plugin and our handler, for `npu-ctk doctor`.
#[derive(Debug, PartialEq, Eq)]
pub struct CriHandler {
    pub version: i64,
    /// The handler's table, as TOML names it.
    pub section: String,
    /// Whether `disabled_plugins` turns the CRI plugin off (Kubernetes then cannot use it).
    pub cri_disabled: bool,
    /// Whether the handler is there at all, its `runtime_type` and `options.BinaryName`.
    pub registered: bool,
    pub runtime_type: Option<String>,
    pub binary: Option<PathBuf>,
    /// Whether pods without a RuntimeClass run on it (`default_runtime_name`).
    pub default: bool,
}

/// Reads the CRI view of containerd's config file `path`.
pub fn containerd_handler(path: &Path) -> Result<CriHandler, EngineError> {
    let text = std::fs::read_to_string(path).map_err(|source| EngineError::Read {
        path: path.into(),
        source,
    })?;
    let doc = parse_toml(&text, path)?;
    let version = doc.get("version").and_then(|v| v.as_integer()).unwrap_or(2);
    let keys = cri_section(version, path)?;
    let cri_ids = [
        "cri",
        "io.containerd.grpc.v1.cri",
        "io.containerd.cri.v1.runtime",
    ];
    let cri_disabled = doc
        .get("disabled_plugins")
        .and_then(Item::as_array)
        .is_some_and(|a| {
            a.iter()
                .any(|p| p.as_str().is_some_and(|p| cri_ids.contains(&p)))
        });
    let section = keys
        .iter()
        .try_fold(doc.as_item(), |item, key| item.get(key));
    let runtime = section
        .and_then(|s| s.get("runtimes"))
        .and_then(|r| r.get(RUNTIME_NAME));
    let text_at = |item: Option<&Item>, key: &str| {
        item.and_then(|i| i.get(key))
            .and_then(Item::as_str)
            .map(String::from)
    };
    Ok(CriHandler {
        version,
        section: format!("plugins.\"{}\".containerd.runtimes.{RUNTIME_NAME}", keys[1]),
        cri_disabled,
        registered: runtime.is_some(),
        runtime_type: text_at(runtime, "runtime_type"),
        binary: text_at(runtime.and_then(|r| r.get("options")), "BinaryName").map(PathBuf::from),
        default: text_at(section, "default_runtime_name").as_deref() == Some(RUNTIME_NAME),
    })
}

fn containerd(
    text: &str,
    path: &Path,
    req: &Request<'_>,
    add: bool,
) -> Result<Option<String>, EngineError> {
    let mut doc = parse_toml(text, path)?;
    let version = doc.get("version").and_then(|v| v.as_integer()).unwrap_or(2);
    let cri = cri_section(version, path)?;
    if add {
        if text.trim().is_empty() {
            doc.insert("version", value(version));
        }
        let section = table_at(doc.as_table_mut(), cri, path)?;
        // The runc options pods run with today (above all SystemdCgroup, which must match the
        // kubelet's cgroup driver) carry over to ours; what ours already has stays.
        let base_name = section
            .get("default_runtime_name")
            .and_then(Item::as_str)
            .filter(|n| *n != RUNTIME_NAME)
            .unwrap_or("runc")
            .to_string();
        let inherited: Vec<(String, Item)> = section
            .get("runtimes")
            .and_then(|r| r.get(&base_name))
            .and_then(|r| r.get("options"))
            .and_then(Item::as_table_like)
            .map(|t| {
                t.iter()
                    .filter(|(k, _)| *k != "BinaryName")
                    .map(|(k, v)| (k.to_string(), v.clone()))
                    .collect()
            })
            .unwrap_or_default();
        if req.set_as_default {
            section.insert("default_runtime_name", value(RUNTIME_NAME));
        }
        let runtime = table_at(section, &["runtimes", RUNTIME_NAME], path)?;
        runtime.set_implicit(false);
        runtime.insert("runtime_type", value("io.containerd.runc.v2"));
        let options = table_at(runtime, &["options"], path)?;
        options.set_implicit(false);
        for (key, item) in inherited {
            if !options.contains_key(&key) {
                options.insert(&key, item);
            }
        }
        options.insert("BinaryName", value(req.runtime_path.display().to_string()));
    } else if let Ok(section) = table_at(doc.as_table_mut(), cri, path) {
        if let Some(runtimes) = section.get_mut("runtimes").and_then(Item::as_table_mut) {
            runtimes.remove(RUNTIME_NAME);
        }
        if section.get("default_runtime_name").and_then(|v| v.as_str()) == Some(RUNTIME_NAME) {
            section.insert("default_runtime_name", value("runc"));
        }
    }
    Ok(Some(doc.to_string()))
}

fn podman(
    text: &str,
    path: &Path,
    req: &Request<'_>,
    add: bool,
) -> Result<Option<String>, EngineError> {
    let mut doc = parse_toml(text, path)?;
    let engine = table_at(doc.as_table_mut(), &["engine"], path)?;
    if add {
        engine.set_implicit(false);
        if req.set_as_default {
            engine.insert("runtime", value(RUNTIME_NAME));
        }
        let runtimes = table_at(engine, &["runtimes"], path)?;
        runtimes.set_implicit(false);
        let mut paths = toml_edit::Array::new();
        paths.push(req.runtime_path.display().to_string());
        runtimes.insert(RUNTIME_NAME, value(paths));
    } else {
        if let Some(runtimes) = engine.get_mut("runtimes").and_then(Item::as_table_mut) {
            runtimes.remove(RUNTIME_NAME);
        }
        if engine.get("runtime").and_then(|v| v.as_str()) == Some(RUNTIME_NAME) {
            engine.remove("runtime");
        }
    }
    Ok(Some(doc.to_string()))
}

fn crio(
    _text: &str,
    _path: &Path,
    req: &Request<'_>,
    add: bool,
) -> Result<Option<String>, EngineError> {
    if !add {
        return Ok(None);
    }
    let mut text = format!(
        "# Written by npu-ctk runtime configure; removed by npu-ctk runtime unconfigure.\n\
         [crio.runtime.runtimes.{RUNTIME_NAME}]\n\
         runtime_path = {:?}\n\
         runtime_type = \"oci\"\n\
         runtime_root = \"/run/npu-runc\"\n",
        req.runtime_path.display().to_string()
    );
    if req.set_as_default {
        text.push_str(&format!(
            "\n[crio.runtime]\ndefault_runtime = \"{RUNTIME_NAME}\"\n"
        ));
    }
    Ok(Some(text))
}

#[cfg(test)]
mod tests {
    use super::*;

    fn req(
        engine: Engine,
        dir: &Path,
        set_as_default: bool,
        dry_run: bool,
    ) -> (Request<'static>, PathBuf) {
        let file = dir.join(match engine {
            Engine::Docker => "daemon.json",
            Engine::Containerd => "config.toml",
            Engine::Podman => "containers.conf",
            Engine::Crio => "crio.conf.d",
        });
        let leaked: &'static Path = Box::leak(file.clone().into_boxed_path());
        (
            Request {
                engine,
                config: leaked,
                runtime_path: Path::new("/usr/local/bin/npu-container-runtime"),
                set_as_default,
                dry_run,
            },
            engine.file(&file),
        )
    }

    #[test]
    fn docker_keeps_other_settings_and_is_idempotent() {
        let dir = tempfile::tempdir().unwrap();
        let (r, file) = req(Engine::Docker, dir.path(), true, false);
        let original = "{\n  \"log-driver\": \"json-file\",\n  \"runtimes\": {\"other\": {\"path\": \"/x\"}}\n}\n";
        std::fs::write(&file, original).unwrap();
        let o = apply(&r, true).unwrap();
        assert!(o.changed && o.diff.contains("+    \"npu\""), "{}", o.diff);
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        assert_eq!(v["log-driver"], "json-file");
        assert_eq!(v["runtimes"]["other"]["path"], "/x");
        assert_eq!(
            v["runtimes"]["npu"]["path"],
            "/usr/local/bin/npu-container-runtime"
        );
        assert_eq!(v["default-runtime"], "npu");
        // Keys keep their order.
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(text.find("log-driver").unwrap() < text.find("runtimes").unwrap());
        assert_eq!(
            std::fs::read_to_string(o.backup.unwrap()).unwrap(),
            original
        );
        assert!(!apply(&r, true).unwrap().changed);
        // Unconfigure removes only what we added.
        assert!(apply(&r, false).unwrap().changed);
        let v: serde_json::Value =
            serde_json::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        assert_eq!(
            v,
            serde_json::from_str::<serde_json::Value>(original).unwrap()
        );
        assert!(!apply(&r, false).unwrap().changed);
    }

    #[test]
    fn dry_run_and_malformed_files_touch_nothing() {
        let dir = tempfile::tempdir().unwrap();
        let (r, file) = req(Engine::Docker, dir.path(), false, true);
        let o = apply(&r, true).unwrap();
        assert!(o.changed && o.diff.contains("npu-container-runtime"));
        assert!(!file.exists(), "dry run wrote the file");
        std::fs::write(&file, "{ broken").unwrap();
        let (r, _) = req(Engine::Docker, dir.path(), false, false);
        let e = apply(&r, true).unwrap_err().to_string();
        assert!(
            e.contains("daemon.json") && e.contains("not valid JSON"),
            "{e}"
        );
        assert_eq!(std::fs::read_to_string(&file).unwrap(), "{ broken");
        let (r, file) = req(Engine::Containerd, dir.path(), false, false);
        std::fs::write(&file, "version = 2\n[plugins\n").unwrap();
        assert!(
            apply(&r, true)
                .unwrap_err()
                .to_string()
                .contains("not valid TOML")
        );
    }

    #[test]
    fn containerd_v2_and_v3_keep_comments() {
        for (version, section) in [
            (2, "io.containerd.grpc.v1.cri"),
            (3, "io.containerd.cri.v1.runtime"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let (r, file) = req(Engine::Containerd, dir.path(), true, false);
            let original =
                format!("# site settings\nversion = {version}\nroot = \"/var/lib/containerd\"\n");
            std::fs::write(&file, &original).unwrap();
            assert!(apply(&r, true).unwrap().changed);
            let text = std::fs::read_to_string(&file).unwrap();
            assert!(text.starts_with("# site settings\n"), "{text}");
            let doc: toml::Value = toml::from_str(&text).unwrap();
            let c = &doc["plugins"][section]["containerd"];
            assert_eq!(c["default_runtime_name"].as_str(), Some("npu"), "{text}");
            assert_eq!(
                c["runtimes"]["npu"]["runtime_type"].as_str(),
                Some("io.containerd.runc.v2")
            );
            assert_eq!(
                c["runtimes"]["npu"]["options"]["BinaryName"].as_str(),
                Some("/usr/local/bin/npu-container-runtime")
            );
            assert!(!apply(&r, true).unwrap().changed);
            assert!(apply(&r, false).unwrap().changed);
            let doc: toml::Value =
                toml::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
            let c = &doc["plugins"][section]["containerd"];
            assert!(
                c.get("runtimes").and_then(|r| r.get("npu")).is_none(),
                "{doc}"
            );
            assert_eq!(c["default_runtime_name"].as_str(), Some("runc"));
        }
    }

    #[test]
    fn containerd_handler_inherits_runcs_options() {
        let dir = tempfile::tempdir().unwrap();
        let (r, file) = req(Engine::Containerd, dir.path(), false, false);
        let runc = "[plugins.\"io.containerd.grpc.v1.cri\".containerd.runtimes.runc.options]";
        std::fs::write(
            &file,
            format!(
                "version = 2\n{runc}\n  SystemdCgroup = true\n  BinaryName = \"/usr/sbin/runc\"\n"
            ),
        )
        .unwrap();
        assert!(apply(&r, true).unwrap().changed);
        let doc: toml::Value = toml::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        let runtimes = &doc["plugins"]["io.containerd.grpc.v1.cri"]["containerd"]["runtimes"];
        let ours = &runtimes["npu"]["options"];
        assert_eq!(ours["SystemdCgroup"].as_bool(), Some(true), "{doc}");
        assert_eq!(
            ours["BinaryName"].as_str(),
            Some("/usr/local/bin/npu-container-runtime")
        );
        assert_eq!(
            runtimes["runc"]["options"]["BinaryName"].as_str(),
            Some("/usr/sbin/runc")
        );
        assert!(!apply(&r, true).unwrap().changed, "idempotent");
    }

    #[test]
    fn the_cri_handler_as_doctor_reads_it() {
        for (version, plugin) in [
            (2, "io.containerd.grpc.v1.cri"),
            (3, "io.containerd.cri.v1.runtime"),
        ] {
            let dir = tempfile::tempdir().unwrap();
            let (r, path) = req(Engine::Containerd, dir.path(), true, false);
            std::fs::write(&path, format!("version = {version}\n")).unwrap();
            let h = containerd_handler(&path).unwrap();
            assert!(
                !h.registered && !h.cri_disabled && h.binary.is_none(),
                "{h:?}"
            );
            apply(&r, true).unwrap();
            assert_eq!(
                containerd_handler(&path).unwrap(),
                CriHandler {
                    version,
                    section: format!("plugins.\"{plugin}\".containerd.runtimes.npu"),
                    cri_disabled: false,
                    registered: true,
                    runtime_type: Some("io.containerd.runc.v2".into()),
                    binary: Some(r.runtime_path.into()),
                    default: true,
                }
            );
            std::fs::write(&path, "version = 2\ndisabled_plugins = [\"cri\"]\n").unwrap();
            assert!(containerd_handler(&path).unwrap().cri_disabled);
            std::fs::write(&path, "version = 4\n").unwrap();
            let e = containerd_handler(&path).unwrap_err().to_string();
            assert!(e.contains("config.toml") && e.contains("version 4"), "{e}");
        }
    }

    #[test]
    fn podman_and_crio() {
        let dir = tempfile::tempdir().unwrap();
        let (r, file) = req(Engine::Podman, dir.path(), false, false);
        std::fs::write(
            &file,
            "[engine]\n# keep me\ncgroup_manager = \"cgroupfs\"\n",
        )
        .unwrap();
        apply(&r, true).unwrap();
        let text = std::fs::read_to_string(&file).unwrap();
        assert!(
            text.contains("# keep me") && text.contains("cgroup_manager"),
            "{text}"
        );
        let doc: toml::Value = toml::from_str(&text).unwrap();
        assert_eq!(
            doc["engine"]["runtimes"]["npu"][0].as_str(),
            Some("/usr/local/bin/npu-container-runtime")
        );
        apply(&r, false).unwrap();
        let doc: toml::Value = toml::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        assert!(doc["engine"]["runtimes"].get("npu").is_none());

        let (r, file) = req(Engine::Crio, dir.path(), true, false);
        apply(&r, true).unwrap();
        let doc: toml::Value = toml::from_str(&std::fs::read_to_string(&file).unwrap()).unwrap();
        assert_eq!(
            doc["crio"]["runtime"]["default_runtime"].as_str(),
            Some("npu")
        );
        assert!(!apply(&r, true).unwrap().changed);
        apply(&r, false).unwrap();
        assert!(!file.exists());
    }
}
