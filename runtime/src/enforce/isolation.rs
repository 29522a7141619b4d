//! Confining one container to its grants with whatever this host uses for device control:
//! the BPF guard on the container's unified cgroup (pure v2, and as a second layer on hybrid
//! hosts) and the v1 `devices` controller (hybrid and legacy hosts).
//!
//! Any failure undoes what was done here and is returned: the caller fails the container.
use crate::{
    enforce::guard::{Guard, GuardError, Maps},
    enforce::v1,
    node::cgroup::{CgroupError, ContainerCgroups, Layout},
    node::config::Config,
    node::devices::{DeviceError, HostDevices, registered_majors},
    node::rules::{Grant, Rule},
    node::state::Enforced,
};

#[derive(Debug, thiserror::Error)]
pub enum IsolationError {
    #[error(transparent)]
    Cgroup(#[from] CgroupError),
    #[error(transparent)]
    Devices(#[from] DeviceError),
    #[error("cgroup v2 device guard: {0}")]
    Guard(#[from] GuardError),
    #[error("cgroup v1 devices controller: {0}")]
    V1(#[from] v1::V1Error),
    #[error("cannot read /proc/devices: {0}")]
    ProcDevices(std::io::Error),
}

/// Enforces `grants` on the cgroups of process `pid` (a process of the container).
pub fn enforce(
    config: &Config,
    layout: &Layout,
    pid: u32,
    host: &HostDevices,
    grants: &[Grant],
) -> Result<Enforced, IsolationError> {
    let cgroups = layout.container_cgroups(pid)?;
    enforce_cgroups(config, &cgroups, host, grants, None)
}

/// Enforces `grants` on already resolved cgroups. `guard` is this build's guard if the caller
/// opened it already; otherwise it is opened (loaded and pinned first if need be) here.
pub fn enforce_cgroups(
    config: &Config,
    cgroups: &ContainerCgroups,
    host: &HostDevices,
    grants: &[Grant],
    guard: Option<Guard>,
) -> Result<Enforced, IsolationError> {
    let mut done = Enforced {
        guard_version: None,
        cgroup_id: None,
        unified_dir: None,
        devices_v1_dir: cgroups.devices_v1.clone(),
    };
    if let Some(unified) = &cgroups.unified {
        let guard = match guard {
            Some(g) => Ok(g),
            None => Guard::ensure(config),
        };
        let mut guard = match guard {
            Ok(g) => g,
            // On a hybrid host the v1 devices controller decides; the BPF layer is a second
            // one. On pure v2 it is the only one: no guard, no NPU container.
            Err(e) if cgroups.devices_v1.is_some() => {
                tracing::warn!(error = %e, "BPF layer skipped: the v1 devices controller isolates");
                return enforce_v1_only(config, cgroups, host, grants, done);
            }
            Err(e) => return Err(e.into()),
        };
        guard_host_classes(&mut guard, host)?;
        guard.maps.register(unified.id, grants)?;
        if let Err(e) = guard.attach(&unified.dir) {
            let _ = guard.maps.unregister(unified.id, grants);
            return Err(e.into());
        }
        done.guard_version = Some(guard.version().to_string());
        done.cgroup_id = Some(unified.id);
        done.unified_dir = Some(unified.dir.clone());
    }
    enforce_v1_only(config, cgroups, host, grants, done)
}

/// Marks every NPU class of `host` as guarded in the guard's maps (with its node count).
pub fn guard_host_classes(guard: &mut Guard, host: &HostDevices) -> Result<(), GuardError> {
    let classes = host.classes().into_iter().map(|class| {
        let nodes = host
            .guarded_nodes
            .iter()
            .filter(|n| n.class() == class)
            .count();
        (class, nodes as u32)
    });
    guard.maps.guard_classes(classes)
}

/// The v1 part of [`enforce_cgroups`], after the BPF layer (recorded in `done`) if any.
fn enforce_v1_only(
    config: &Config,
    cgroups: &ContainerCgroups,
    host: &HostDevices,
    grants: &[Grant],
    done: Enforced,
) -> Result<Enforced, IsolationError> {
    if let Some(dir) = &cgroups.devices_v1
        && let Err(e) = enforce_v1(dir, host, grants)
    {
        // The v1 writes only narrow access; the runtime removes the cgroup with the failed
        // container. The guard registration is ours to undo.
        let _ = release(config, &done, grants);
        return Err(e);
    }
    Ok(done)
}

fn enforce_v1(
    dir: &std::path::Path,
    host: &HostDevices,
    grants: &[Grant],
) -> Result<(), IsolationError> {
    // Wildcard rules are re-expressed for every class with a driver or a node on this host.
    let known = || {
        let text = crate::node::pseudo::read_to_string("/proc/devices".as_ref())
            .map_err(IsolationError::ProcDevices)?;
        let mut known = registered_majors(&text);
        known.extend(host.other_classes.iter().copied());
        Ok::<_, IsolationError>(known)
    };
    let state = v1::read_list(dir)?;
    let plan = v1::plan(&state, &host.classes(), &host.guarded_nodes, grants, known)?;
    v1::apply(dir, &plan, &host.guarded_nodes, grants)?;
    Ok(())
}

/// Re-establishes enforcement recorded in `done` (after `runc update` or anything else that
/// may have rewritten device rules): re-registers and re-attaches the guard where it is
/// missing, and re-applies the v1 rules.
pub fn reapply(config: &Config, done: &Enforced, grants: &[Grant]) -> Result<(), IsolationError> {
    if let (Some(version), Some(id), Some(dir)) =
        (&done.guard_version, done.cgroup_id, &done.unified_dir)
    {
        let mut guard = Guard::open(&config.bpf_dir, version)?;
        guard.maps.register(id, grants)?;
        guard.attach(dir)?;
    }
    if let Some(dir) = &done.devices_v1_dir {
        let host = HostDevices::discover(config)?;
        enforce_v1(dir, &host, grants)?;
    }
    Ok(())
}

/// Live revoke (`allow = false`) or restore of one grant of a running container, in every
/// layer it is confined by (the guard's map, the v1 devices controller). `now` is what the
/// container holds after the change; the v1 result is verified against it.
pub fn set_grant(
    config: &Config,
    done: &Enforced,
    grant: &Grant,
    allow: bool,
    now: &[Grant],
) -> Result<(), IsolationError> {
    if let (Some(_), Some(id)) = (&done.guard_version, done.cgroup_id) {
        let mut maps = Maps::open(&config.bpf_dir)?;
        if allow {
            maps.register(id, std::slice::from_ref(grant))?;
        } else {
            maps.revoke(id, grant)?;
        }
    }
    if let Some(dir) = &done.devices_v1_dir {
        let rule = Rule::exact(grant.dev_type, grant.major, grant.minor, grant.access);
        let (deny, allow_rules) = if allow {
            (vec![], vec![rule])
        } else {
            (vec![rule], vec![])
        };
        let plan = v1::Plan {
            allow_first: Vec::new(),
            deny,
            allow: allow_rules,
        };
        let host = HostDevices::discover(config)?;
        v1::apply(dir, &plan, &host.guarded_nodes, now)?;
    }
    Ok(())
}

/// Removes a container's guard registration (v1 rules die with its cgroup). If the maps'
/// pins are gone (deleted by hand), there is nothing left to remove: unpinned maps live only
/// as long as a cgroup keeps a program using them attached, and cgroup ids are never reused.
pub fn release(config: &Config, done: &Enforced, grants: &[Grant]) -> Result<(), IsolationError> {
    if let (Some(_), Some(id)) = (&done.guard_version, done.cgroup_id) {
        let mut maps = match Maps::open(&config.bpf_dir) {
            Err(GuardError::OpenPin {
                source: aya::maps::MapError::SyscallError(e),
                ..
            }) if e.io_error.kind() == std::io::ErrorKind::NotFound => return Ok(()),
            other => other?,
        };
        maps.unregister(id, grants)?;
    }
    Ok(())
}
