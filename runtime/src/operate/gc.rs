//! `npu-ctk gc`: removes what stopped containers left behind when their `poststop` never ran
//! (a killed hook, a crashed engine): records whose cgroups are gone, map entries of cgroups
//! that no longer exist, and pins of older program versions nothing uses any more.
use std::{
    collections::BTreeSet,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use serde::Serialize;

use crate::{
    enforce::guard::{self, GuardError, Maps},
    enforce::isolation,
    node::cgroup::Layout,
    node::config::Config,
    node::state,
    operate::error::Error,
    operate::node_guard,
};

#[derive(Debug, Default, Serialize)]
pub struct Report {
    /// Records removed, by container id.
    pub records: Vec<String>,
    /// Temporary record files of writers that died.
    pub temp_files: Vec<String>,
    /// cgroup ids whose map entries were removed.
    pub map_entries: Vec<u64>,
    /// Program versions whose pins were removed.
    pub versions: Vec<String>,
    /// Problems met along the way (each left as it was).
    pub problems: Vec<String>,
}

impl Report {
    /// What `npu-ctk gc` prints.
    pub fn text(&self) -> String {
        let mut lines = vec![format!(
            "removed {} record(s), {} map entr(y/ies), {} old program version(s)",
            self.records.len(),
            self.map_entries.len(),
            self.versions.len()
        )];
        lines.extend(self.records.iter().map(|id| format!("  record {id}")));
        lines.extend(self.map_entries.iter().map(|id| format!("  cgroup {id}")));
        lines.extend(
            self.versions
                .iter()
                .map(|v| format!("  program version {v}")),
        );
        lines.extend(self.problems.iter().map(|p| format!("  left as is: {p}")));
        lines.join("\n")
    }
}

/// Ids of every cgroup under `root` (directory inode numbers on cgroup2 are cgroup ids).
fn live_cgroup_ids(root: &Path) -> BTreeSet<u64> {
    let mut ids = BTreeSet::new();
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        if let Ok(meta) = std::fs::metadata(&dir) {
            ids.insert(meta.ino());
        }
        if let Ok(entries) = std::fs::read_dir(&dir) {
            stack.extend(
                entries
                    .flatten()
                    .filter(|e| e.file_type().is_ok_and(|t| t.is_dir()))
                    .map(|e| e.path()),
            );
        }
    }
    ids
}

fn gone(dir: &Option<PathBuf>) -> bool {
    dir.as_ref().is_some_and(|d| !d.exists())
}

pub fn run(config: &Config) -> Result<Report, Error> {
    let mut report = Report::default();
    let unified = match Layout::detect()? {
        Layout::Unified { root } => Some(root.mount_point),
        Layout::Hybrid { unified, .. } => Some(unified.mount_point),
        Layout::Legacy { .. } => None,
    };
    let live = unified.as_deref().map(live_cgroup_ids);
    report.temp_files = state::remove_orphaned_temps(&config.state_dir);
    for record in state::list(&config.state_dir) {
        let record = match record {
            Ok(r) => r,
            Err(e) => {
                report.problems.push(e.to_string());
                continue;
            }
        };
        let e = &record.enforced;
        // Judge by cgroup id where there is one: ids are the same in every mount namespace,
        // while the recorded paths are as the hook saw them (maybe in another namespace).
        let dead = match (e.cgroup_id, &live) {
            (Some(id), Some(live)) => !live.contains(&id),
            _ => gone(&e.unified_dir) || gone(&e.devices_v1_dir),
        };
        if dead {
            if let Err(err) = isolation::release(config, e, &record.grants) {
                report.problems.push(format!("{}: {err}", record.id));
            }
            state::remove(&config.state_dir, &record.id)?;
            report.records.push(record.id);
        }
    }

    let live = live.unwrap_or_default();
    // The shared maps: entries of cgroups that are gone (ids are never reused).
    match Maps::open(&config.bpf_dir) {
        Ok(mut maps) => {
            for id in maps.cgroup_ids()? {
                if !live.contains(&id) {
                    maps.purge(id)?;
                    report.map_entries.push(id);
                }
            }
        }
        Err(GuardError::OpenPin { .. }) => {}
        Err(e) => return Err(e.into()),
    }
    // Program versions: an older one no live container or guarded parent uses is unpinned
    // (safe: the kernel keeps a program alive while any cgroup has it attached).
    let mut in_use: BTreeSet<String> = state::list(&config.state_dir)
        .into_iter()
        .flatten()
        .filter_map(|r| r.enforced.guard_version)
        .collect();
    in_use.extend(node_guard::versions_in_use(config));
    let current = guard::version();
    let versions =
        guard::versions(&config.bpf_dir).map_err(|source| crate::error::Error::Stdio {
            what: "list pinned guard versions",
            source,
        })?;
    for version in versions {
        if version == current || in_use.contains(&version) {
            continue;
        }
        let dir = config.bpf_dir.join(&version);
        match std::fs::remove_dir_all(&dir) {
            Ok(()) => report.versions.push(version),
            Err(e) => report.problems.push(format!("{}: {e}", dir.display())),
        }
    }
    Ok(report)
}
