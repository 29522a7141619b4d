//! `npu-ctk gc`: removes what stopped containers left behind when no cleanup ran for them (a
//! container deleted with plain runc rather than through the shim, a killed shim or hook, a
//! crashed engine): records whose cgroups are gone, map entries of cgroups that no longer
//! exist, and pins of older program versions nothing uses any more.
use std::collections::BTreeSet;

use serde::Serialize;

use crate::{
    enforce::guard::{self, GuardError, Maps},
    enforce::isolation,
    node::cgroup::{self, Layout},
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

pub fn run(config: &Config) -> Result<Report, Error> {
    let mut report = Report::default();
    let unified = match Layout::detect()? {
        Layout::Unified { root } => Some(root.mount_point),
        Layout::Hybrid { unified, .. } => Some(unified.mount_point),
        Layout::Legacy { .. } => None,
    };
    let live = unified.as_deref().map(cgroup::live_ids);
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
        if e.gone(live.as_ref()) {
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
