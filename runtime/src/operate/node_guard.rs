//! `npu-ctk guard install|uninstall|status`: the node guard (DESIGN.md 4.4).
//!
//! The guard program attached once to each container parent cgroup (`/kubepods.slice`,
//! `/docker`, ...) runs for every container below it, however it was started: a registered
//! container gets its grants; a task no container owns may mknod an NPU-class node but never
//! read or write one. So a container started around the runtime (`--runtime=runc`, another
//! RuntimeClass, `ctr run` without our binary) opens no NPU.
//!
//! Installing a new build's guard attaches the new program first and only then detaches the
//! older ones, so the parent is never unguarded; both programs use the same maps, so running
//! containers keep their verdicts. "Ours" is exactly a program of a version pinned under
//! `bpf_dir` or recorded here (`state_dir/node/node-guard.json`): nothing else attached to a
//! parent is touched.
use std::{collections::BTreeSet, path::PathBuf};

use serde::{Deserialize, Serialize};

use crate::{
    enforce::{
        guard::{self, Guard},
        isolation,
    },
    node::{
        cgroup::{Layout, Mount},
        config::{self, Config},
        devices::HostDevices,
        state,
    },
    operate::error::Error,
};

/// The node fact naming the guarded parents.
const FACT: &str = "node-guard";

/// One guarded parent, as recorded.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct GuardedParent {
    /// Relative to the cgroup v2 root, e.g. `/kubepods.slice`.
    pub path: String,
    pub version: String,
    pub program_id: u32,
}

#[derive(Debug, Default, Serialize, Deserialize)]
struct Fact {
    parents: Vec<GuardedParent>,
}

/// What happened at one parent.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
#[serde(tag = "outcome", rename_all = "kebab-case")]
pub enum Outcome {
    /// The guard was attached.
    Installed,
    /// This build's guard was already attached: no change.
    Current,
    /// This build's guard was attached, then older versions detached.
    Upgraded {
        from: Vec<String>,
    },
    /// Our programs were detached.
    Removed {
        versions: Vec<String>,
    },
    /// Nothing of ours was attached.
    NotGuarded,
    /// A default parent that does not exist here (not an error).
    Absent,
    Failed {
        reason: String,
    },
}

#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ParentReport {
    pub path: String,
    #[serde(flatten)]
    pub outcome: Outcome,
}

/// One parent as `guard status` shows it.
#[derive(Debug, Clone, PartialEq, Eq, Serialize)]
pub struct ParentStatus {
    pub path: String,
    pub present: bool,
    /// Versions of our guard attached there (normally one).
    pub versions: Vec<String>,
    /// Whether this build's program is among them.
    pub current: bool,
}

impl ParentReport {
    pub fn failed(&self) -> bool {
        matches!(self.outcome, Outcome::Failed { .. })
    }
}

/// The unified tree, or why there is none.
fn unified(layout: &Layout) -> Result<Mount, Error> {
    layout.unified().cloned().ok_or(Error::NoUnifiedTree)
}

/// The cgroup directory of parent `path`, checked: a directory of the cgroup v2 tree.
fn parent_dir(unified: &Mount, path: &str) -> Result<PathBuf, String> {
    config::check_parent(path).map_err(|reason| format!("{path:?} {reason}"))?;
    let dir = unified.dir(path).ok_or_else(|| {
        format!(
            "not below the cgroup v2 tree at {}",
            unified.mount_point.display()
        )
    })?;
    let is_cgroup = nix::sys::statfs::statfs(&dir)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC);
    if !dir.exists() {
        Err(format!("no such cgroup ({})", dir.display()))
    } else if !dir.is_dir() || !is_cgroup {
        Err(format!("{} is not a cgroup v2 directory", dir.display()))
    } else {
        Ok(dir)
    }
}

fn read_fact(config: &Config) -> Result<Fact, Error> {
    Ok(state::read_node(&config.state_dir, FACT)?.unwrap_or_default())
}

/// Program ids that are ours: every pinned version's, and every recorded one.
fn ours(config: &Config, fact: &Fact) -> std::collections::BTreeMap<u32, String> {
    let mut ids = guard::pinned_programs(&config.bpf_dir);
    for p in &fact.parents {
        ids.entry(p.program_id).or_insert_with(|| p.version.clone());
    }
    ids
}

/// The parents to act on: those named, else the configured ones (absent ones are reported).
fn targets(config: &Config, named: &[String]) -> (Vec<String>, bool) {
    if named.is_empty() {
        (config.guarded_parents.clone(), false)
    } else {
        (named.to_vec(), true)
    }
}

/// Attaches this build's guard to each parent (loading and pinning it if need be), replacing
/// older versions of ours without a window.
pub fn install(config: &Config, named: &[String]) -> Result<Vec<ParentReport>, Error> {
    let layout = Layout::detect()?;
    let unified = unified(&layout)?;
    let (paths, explicit) = targets(config, named);
    let mut guard = Guard::ensure(config)?;
    isolation::guard_host_classes(&mut guard, &HostDevices::discover(config)?)?;
    let mut fact = read_fact(config)?;
    let ours = ours(config, &fact);
    let current = guard.program_id();
    let mut reports = Vec::new();
    for path in paths {
        let dir = match parent_dir(&unified, &path) {
            Ok(dir) => dir,
            Err(_) if !explicit && unified.dir(&path).is_some_and(|d| !d.exists()) => {
                reports.push(ParentReport {
                    path,
                    outcome: Outcome::Absent,
                });
                continue;
            }
            Err(reason) => {
                reports.push(ParentReport {
                    path,
                    outcome: Outcome::Failed { reason },
                });
                continue;
            }
        };
        let outcome = (|| -> Result<Outcome, Error> {
            let attached = guard::attached(&dir)?;
            let fresh = guard.attach(&dir)?;
            // Only now, with this build's program in place, the older ones go.
            let mut from = Vec::new();
            for id in attached.iter().filter(|id| **id != current) {
                if let Some(version) = ours.get(id) {
                    guard::detach(&dir, *id)?;
                    from.push(version.clone());
                }
            }
            Ok(match (fresh, from.is_empty()) {
                (_, false) => Outcome::Upgraded { from },
                (true, true) => Outcome::Installed,
                (false, true) => Outcome::Current,
            })
        })()
        .unwrap_or_else(|e| Outcome::Failed {
            reason: e.to_string(),
        });
        if !matches!(outcome, Outcome::Failed { .. }) {
            fact.parents.retain(|p| p.path != path);
            fact.parents.push(GuardedParent {
                path: path.clone(),
                version: guard.version().to_string(),
                program_id: current,
            });
        }
        reports.push(ParentReport { path, outcome });
    }
    state::write_node(&config.state_dir, FACT, &fact)?;
    if !explicit && reports.iter().all(|r| r.outcome == Outcome::Absent) {
        return Err(Error::NoGuardedParent(config.guarded_parents.clone()));
    }
    Ok(reports)
}

/// Detaches every program of ours from each parent (the named ones, else the recorded and the
/// configured ones).
pub fn uninstall(config: &Config, named: &[String]) -> Result<Vec<ParentReport>, Error> {
    let unified = unified(&Layout::detect()?)?;
    let mut fact = read_fact(config)?;
    let ours = ours(config, &fact);
    let paths: Vec<String> = if named.is_empty() {
        let mut all: Vec<String> = fact.parents.iter().map(|p| p.path.clone()).collect();
        all.extend(config.guarded_parents.iter().cloned());
        let mut seen = BTreeSet::new();
        all.retain(|p| seen.insert(p.clone()));
        all
    } else {
        named.to_vec()
    };
    let mut reports = Vec::new();
    for path in paths {
        let outcome = match parent_dir(&unified, &path) {
            Err(_) if named.is_empty() => Outcome::Absent,
            Err(reason) => Outcome::Failed { reason },
            Ok(dir) => (|| -> Result<Outcome, Error> {
                let mut versions = Vec::new();
                for id in guard::attached(&dir)? {
                    if let Some(version) = ours.get(&id) {
                        guard::detach(&dir, id)?;
                        versions.push(version.clone());
                    }
                }
                Ok(if versions.is_empty() {
                    Outcome::NotGuarded
                } else {
                    Outcome::Removed { versions }
                })
            })()
            .unwrap_or_else(|e| Outcome::Failed {
                reason: e.to_string(),
            }),
        };
        if !matches!(outcome, Outcome::Failed { .. }) {
            fact.parents.retain(|p| p.path != path);
        }
        if !(named.is_empty() && outcome == Outcome::Absent) {
            reports.push(ParentReport { path, outcome });
        }
    }
    state::write_node(&config.state_dir, FACT, &fact)?;
    Ok(reports)
}

/// Each recorded or configured parent: present, which of our versions is attached, current.
pub fn status(config: &Config) -> Result<Vec<ParentStatus>, Error> {
    let layout = Layout::detect()?;
    let Some(unified) = layout.unified() else {
        return Ok(Vec::new());
    };
    let fact = read_fact(config)?;
    let ours = ours(config, &fact);
    let current = guard::version();
    let mut paths: Vec<String> = fact.parents.iter().map(|p| p.path.clone()).collect();
    paths.extend(config.guarded_parents.iter().cloned());
    let mut seen = BTreeSet::new();
    paths.retain(|p| seen.insert(p.clone()));
    let mut out = Vec::new();
    for path in paths {
        let dir = parent_dir(unified, &path).ok();
        let mut versions: Vec<String> = dir
            .as_deref()
            .and_then(|d| guard::attached(d).ok())
            .unwrap_or_default()
            .iter()
            .filter_map(|id| ours.get(id).cloned())
            .collect();
        versions.sort();
        out.push(ParentStatus {
            present: dir.is_some(),
            current: versions.contains(&current),
            versions,
            path,
        });
    }
    Ok(out)
}

/// Versions attached to a guarded parent, which `gc` must keep pinned.
pub fn versions_in_use(config: &Config) -> BTreeSet<String> {
    read_fact(config)
        .map(|f| f.parents.into_iter().map(|p| p.version).collect())
        .unwrap_or_default()
}

/// What `guard install|uninstall` prints.
pub fn report(reports: &[ParentReport]) -> String {
    let lines: Vec<String> = reports
        .iter()
        .map(|r| {
            let what = match &r.outcome {
                Outcome::Installed => "guarded".to_string(),
                Outcome::Current => "already guarded by this build; no change".to_string(),
                Outcome::Upgraded { from } => {
                    format!("guarded by this build (replaced {})", from.join(", "))
                }
                Outcome::Removed { versions } => format!("guard removed ({})", versions.join(", ")),
                Outcome::NotGuarded => "not guarded; no change".to_string(),
                Outcome::Absent => "not present here; skipped".to_string(),
                Outcome::Failed { reason } => format!("FAILED: {reason}"),
            };
            format!("{}: {what}", r.path)
        })
        .collect();
    lines.join("\n")
}

/// What `guard status` prints.
pub fn status_report(parents: &[ParentStatus]) -> String {
    if parents.is_empty() {
        return "no cgroup v2 tree here: no node guard (the shim's confinement protects v1 hosts)"
            .into();
    }
    let current = guard::version();
    let lines: Vec<String> = parents
        .iter()
        .map(|p| {
            let state = match (p.present, p.versions.is_empty(), p.current) {
                (false, _, _) => "not present".to_string(),
                (true, true, _) => "NOT GUARDED".to_string(),
                (true, false, true) => format!("guarded (version {current}, current)"),
                (true, false, false) => {
                    format!(
                        "guarded by an older build ({}): run npu-ctk guard install",
                        p.versions.join(", ")
                    )
                }
            };
            format!("{:<24} {state}", p.path)
        })
        .collect();
    lines.join("\n")
}
