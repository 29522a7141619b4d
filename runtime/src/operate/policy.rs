//! The live device policy as an operator wants to see it: every NPU container with its
//! cgroup, granted devices and counters, read from the pinned maps of every program version
//! and joined with the runtime's records (which know container ids).
use std::{collections::BTreeMap, path::PathBuf};

use serde::Serialize;

use crate::{
    enforce::guard::{self, GuardError, Maps, Variant},
    node::config::Config,
    node::rules::Grant,
    node::state,
    operate::error::Error,
};

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct PolicyEntry {
    /// Container id from our record; `None` for map entries without one (see `gc`).
    pub id: Option<String>,
    /// Guard program version attached to the container; `None` for v1-only containers.
    pub guard_version: Option<String>,
    /// The variant that version runs on this kernel (and so what it cannot do).
    pub guard_variant: Option<Variant>,
    pub cgroup_id: Option<u64>,
    /// The container's unified cgroup and/or v1 devices cgroup.
    pub cgroups: Vec<PathBuf>,
    /// Device paths inside the container (from the record).
    pub devices: Vec<PathBuf>,
    pub grants: Vec<Grant>,
    /// Grants revoked live (`npu-ctk device revoke`).
    pub revoked: Vec<Grant>,
    /// Guarded accesses allowed/denied by the guard (`None` without a BPF layer).
    pub allowed: Option<u64>,
    pub denied: Option<u64>,
    /// Request variables that did not count (`env_requests`), and why.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub refused: Option<String>,
}

/// The live policy, sorted by container id (unknown entries last).
pub fn collect(config: &Config) -> Result<Vec<PolicyEntry>, Error> {
    let mut entries: Vec<PolicyEntry> = Vec::new();
    // cgroup id -> index in `entries`, for joining the maps.
    let mut by_id: BTreeMap<u64, usize> = BTreeMap::new();
    for record in state::list(&config.state_dir) {
        let record = record?;
        let e = &record.enforced;
        if let (Some(_), Some(id)) = (&e.guard_version, e.cgroup_id) {
            by_id.insert(id, entries.len());
        }
        entries.push(PolicyEntry {
            id: Some(record.id.clone()),
            guard_version: e.guard_version.clone(),
            guard_variant: e
                .guard_version
                .as_deref()
                .and_then(|v| guard::pinned_variant(&config.bpf_dir, v)),
            cgroup_id: e.cgroup_id,
            cgroups: e
                .unified_dir
                .iter()
                .chain(&e.devices_v1_dir)
                .cloned()
                .collect(),
            devices: record.devices.clone(),
            grants: record.grants.clone(),
            revoked: record.revoked.clone(),
            allowed: None,
            denied: None,
            refused: record.refused.clone(),
        });
    }
    let maps = match Maps::open(&config.bpf_dir) {
        Ok(maps) => Some(maps),
        // No maps pinned (cgroup v1 only, or no NPU container yet): the records are all.
        Err(GuardError::OpenPin { .. }) => None,
        Err(e) => return Err(e.into()),
    };
    for p in maps.map(|m| m.policy()).transpose()?.unwrap_or_default() {
        match by_id.get(&p.cgroup_id) {
            Some(&i) => {
                // The maps are the truth for what is enforced now.
                entries[i].grants = p.grants;
                entries[i].allowed = Some(p.allowed);
                entries[i].denied = Some(p.denied);
            }
            None => entries.push(PolicyEntry {
                id: None,
                guard_version: None,
                guard_variant: None,
                cgroup_id: Some(p.cgroup_id),
                cgroups: Vec::new(),
                devices: Vec::new(),
                revoked: Vec::new(),
                grants: p.grants,
                allowed: Some(p.allowed),
                denied: Some(p.denied),
                refused: None,
            }),
        }
    }
    entries.sort_by(|a, b| (a.id.is_none(), &a.id).cmp(&(b.id.is_none(), &b.id)));
    Ok(entries)
}

/// The entries `npu-ctk policy show [ID]` prints: all of them, or the container `id`'s (an
/// error if it has none).
pub fn show(config: &Config, id: Option<&str>) -> Result<Vec<PolicyEntry>, Error> {
    let mut entries = collect(config)?;
    if let Some(id) = id {
        entries.retain(|e| e.id.as_deref() == Some(id));
        if entries.is_empty() {
            return Err(Error::UnknownContainer(id.to_string()));
        }
    }
    Ok(entries)
}

/// The policy as a table: one row per container, its revoked grants and cgroups under it.
pub fn table(entries: &[PolicyEntry]) -> String {
    let mut lines = vec![format!(
        "{:<24} {:>10} {:>9} {:>9}  GRANTS",
        "CONTAINER", "CGROUP-ID", "ALLOWED", "DENIED"
    )];
    let num = |v: Option<u64>| v.map_or("-".to_string(), |v| v.to_string());
    let list = |grants: &[Grant]| {
        grants
            .iter()
            .map(ToString::to_string)
            .collect::<Vec<_>>()
            .join(", ")
    };
    for e in entries {
        lines.push(format!(
            "{:<24} {:>10} {:>9} {:>9}  {}",
            e.id.as_deref().unwrap_or("(unknown: run gc)"),
            num(e.cgroup_id),
            num(e.allowed),
            num(e.denied),
            list(&e.grants)
        ));
        if !e.revoked.is_empty() {
            lines.push(format!("{:<24} revoked {}", "", list(&e.revoked)));
        }
        if let Some(refused) = &e.refused {
            lines.push(format!("{:<24} refused {refused}", ""));
        }
        for cg in &e.cgroups {
            lines.push(format!("{:<24} cgroup {}", "", cg.display()));
        }
    }
    // What this kernel's guard cannot do, once per variant in use.
    let variants: std::collections::BTreeSet<_> =
        entries.iter().filter_map(|e| e.guard_variant).collect();
    for v in variants {
        for limit in v.limits() {
            lines.push(format!("note: {v:?} guard program on this kernel: {limit}"));
        }
    }
    lines.join("\n")
}
