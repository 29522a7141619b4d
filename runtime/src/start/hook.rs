//! What `npu-container-hook` does at each OCI hook stage.
//!
//! `create-runtime` runs after the runtime made the container's namespaces, cgroup and device
//! filter, before `pivot_root`: it checks every driver mount source and makes it a detached
//! read-only mount, enforces isolation, records the container, then enters the container's
//! mount namespace to create missing device nodes (hook-only mode) and attach the mounts
//! inside the rootfs. Any failure undoes the grant and the record and fails the container.
use std::path::{Path, PathBuf};

use oci_spec::runtime::State;

use crate::{
    enforce::guard::Guard,
    enforce::isolation,
    error::Error,
    node::cgroup::{CgroupError, Layout},
    node::config::Config,
    node::devices::{self, ContainerDevice, DeviceError, HostDevices},
    node::rules,
    node::state::{self, Record},
    start::mounts::{self, MountApi, MountError},
    start::names::{Names, Treatment},
    start::shim,
    start::spec::{Cleanup, Spec},
};

/// The stages `npu-container-hook` serves (its one argument), with what each does.
pub const STAGES: [(&str, &str); 4] = [
    (
        "create-runtime",
        "mount the driver into the container, enforce its NPU grant and record it (OCI state \
         on stdin)",
    ),
    (
        "prestart",
        "the same as create-runtime, for runtimes without the createRuntime stage",
    ),
    (
        "poststop",
        "remove the container's grants and record (OCI state on stdin); always exits 0",
    ),
    (
        "precreate",
        "Podman's precreate stage: the spec on stdin, the spec with the NPU grant on stdout",
    ),
];

/// Parses the state the runtime writes on a hook's stdin.
pub fn parse_state(input: &[u8]) -> Result<State, Error> {
    serde_json::from_slice(input).map_err(|e| Error::BadState(e.to_string()))
}

/// What `create-runtime` needs from the host whatever the container. It is gathered before
/// the state is read: runc writes the state on the hook's stdin only some time after starting
/// it (about 0.15 ms on the test machines), so this work overlaps that wait instead of
/// following it. Failures are kept for when they matter: a container without a request never
/// sees them.
pub struct HostView {
    devices: Result<HostDevices, DeviceError>,
    layout: Result<Layout, CgroupError>,
    /// The layout came from [`Layout::probe`] and may show the cgroup tree from elsewhere
    /// than its root: the cgroups found with it must be shown to hold the container.
    check: bool,
    /// The guard of this build, when the host has a unified tree and it is pinned already.
    guard: Option<Guard>,
    mount_api: MountApi,
}

impl HostView {
    pub fn gather(config: &Config) -> Self {
        let (layout, check) = match Layout::probe() {
            Some(probed) => (Ok(probed.layout), !probed.exact),
            None => (Layout::detect(), false),
        };
        let guard = match &layout {
            Ok(Layout::Unified { .. } | Layout::Hybrid { .. }) => Guard::pinned(&config.bpf_dir),
            _ => None,
        };
        Self {
            devices: HostDevices::cached(config),
            layout,
            check,
            guard,
            mount_api: MountApi::probe(),
        }
    }
}

/// Prepares the container; `None` when it is left alone (it names and reaches no NPU).
pub fn create_runtime(
    config: &Config,
    view: HostView,
    state: &State,
) -> Result<Option<Prepared>, Error> {
    let pid = state
        .pid()
        .filter(|p| *p > 0)
        .ok_or_else(|| Error::BadState("no container pid".into()))? as u32;
    let bundle = state.bundle();
    let spec = Spec::read(bundle)?;
    let host = view.devices?;
    let profiles: Vec<_> = host.families.iter().map(|f| f.profile.clone()).collect();
    let names = Names::of(&spec, &host.classes(), &profiles, config.env_requests)?;
    let treatment = names.treatment(config.confine_unnamed);
    if treatment == Treatment::PassThrough {
        return Ok(None);
    }
    let mut devices = Vec::new();
    for (family, r) in &names.requests {
        devices.extend(host.families[*family].select(
            r.devices.indices(),
            r.virtual_devices,
            &config.dev_root,
        )?);
    }
    let requested = devices::grants(&devices);

    let layout = view.layout?;
    // On cgroup v2 only the runtime's own filter can grant; without the spec edit the
    // container could never open its NPUs, so say how to fix it instead of starting it.
    // (Exact device entries are granted by their own rules already.)
    if matches!(layout, Layout::Unified { .. })
        && let Some(missing) = requested.iter().find(|g| !spec.allows(g))
    {
        return Err(Error::NotGrantedOnV2 { grant: *missing });
    }
    let grants = rules::merge(
        requested
            .into_iter()
            .chain(names.exact.iter().copied())
            .collect(),
    );
    let mut cgroups = layout.container_cgroups(pid);
    if view.check && !cgroups.as_ref().is_ok_and(|c| c.hold(pid)) {
        // Not where the standard places say (a tree shown from another root): ask the
        // mount table.
        cgroups = Layout::detect()?.container_cgroups(pid);
    }
    let cgroups = cgroups?;

    let mount_api = view.mount_api;
    let mut prepared = Vec::new();
    let mut checked = mounts::CheckedDirs::new();
    let mut seen = Vec::new();
    for (_, request) in names.requests.iter().filter(|(_, r)| !r.no_driver) {
        let paths = mounts::read_lists(
            &config.mount_list_dir,
            &request.mount_lists,
            request.mount_lists_explicit,
        )?;
        // Two families may list the same path: it is mounted once.
        for path in paths {
            if seen.contains(&path) {
                continue;
            }
            if let Some(p) = mounts::prepare(
                &config.driver_root,
                &path,
                request.allow_link,
                mount_api,
                &mut checked,
            )? {
                prepared.push(p);
            }
            seen.push(path);
        }
    }

    let record_mounts = prepared.len();
    let enforced = isolation::enforce_cgroups(config, &cgroups, &host, &grants, view.guard)?;
    // The container paths of what it got: the request's devices, then its exact entries.
    let mut paths: Vec<PathBuf> = devices.iter().map(|d| d.container_path.clone()).collect();
    for d in spec.devices() {
        let named = names
            .exact
            .iter()
            .any(|g| (g.dev_type, g.major, g.minor) == (d.dev_type, d.major, d.minor));
        if named && !paths.contains(&d.path) {
            paths.push(d.path);
        }
    }
    let record = Record {
        id: state.id().to_string(),
        bundle: bundle.clone(),
        devices: paths,
        grants: grants.clone(),
        enforced,
        revoked: Vec::new(),
        confined: treatment == Treatment::Confine,
        refused: names.refused.clone(),
    };
    let result = state::write(&config.state_dir, &record)
        .map_err(Error::from)
        .and_then(|()| {
            let rootfs = spec.rootfs(bundle)?;
            let mut in_spec = spec.device_paths();
            // A user namespace's devices are bind-mounted by the runtime (the shim's edit).
            in_spec.extend(spec.mount_destinations());
            let mut missing: Vec<ContainerDevice> = devices
                .iter()
                .filter(|d| !in_spec.iter().any(|p| d.container_path == Path::new(p)))
                .cloned()
                .collect();
            // Made with the host node's mode and owner: as they are now.
            devices::refresh(&mut missing);
            if missing.is_empty() && prepared.is_empty() {
                return Ok(());
            }
            mounts::in_mount_namespace(pid, || inside_container(&rootfs, &missing, prepared))??;
            Ok(())
        });
    if let Err(e) = result {
        // Best effort: the error in hand is what the operator needs to see.
        let _ = isolation::release(config, &record.enforced, &record.grants);
        let _ = state::remove(&config.state_dir, &record.id);
        return Err(e);
    }
    if let Some(refused) = &record.refused {
        tracing::warn!(id = state.id(), refused, "NPU request refused");
    }
    Ok(Some(Prepared {
        id: record.id,
        devices: record.devices,
        confined: record.confined,
        mounts: record_mounts,
        mount_api,
    }))
}

/// What `create-runtime` did for a container, for the hook's one log line (a line costs a
/// write to the log file: each container start gets one).
pub struct Prepared {
    pub id: String,
    pub devices: Vec<PathBuf>,
    pub confined: bool,
    pub mounts: usize,
    pub mount_api: MountApi,
}

impl Prepared {
    /// Logs the container's preparation, with the hook's duration.
    pub fn log(&self, stage: &str, elapsed_us: u64) {
        tracing::info!(
            stage,
            elapsed_us,
            id = self.id,
            devices = ?self.devices,
            confined = self.confined,
            mounts = self.mounts,
            mount_api = ?self.mount_api,
            "hook finished: NPU container prepared"
        );
    }
}

fn inside_container(
    rootfs: &Path,
    missing: &[ContainerDevice],
    prepared: Vec<mounts::Prepared>,
) -> Result<(), MountError> {
    let root = pathrs::Root::open(rootfs).map_err(|source| MountError::InRoot {
        op: "open",
        path: rootfs.into(),
        source,
    })?;
    for device in missing {
        mounts::create_device(&root, device)?;
    }
    for p in prepared {
        mounts::attach(&root, p)?;
    }
    Ok(())
}

/// Removes the container's grants and record. Missing pieces are fine: poststop may run for
/// containers we never prepared, or twice. (Behind the shim there is no poststop hook: the
/// shim cleans up after the runtime's `delete`.)
pub fn poststop(config: &Config, state: &State) -> Result<(), Error> {
    let Some(record) = state::read(&config.state_dir, state.id())? else {
        return Ok(());
    };
    isolation::release(config, &record.enforced, &record.grants)?;
    state::remove(&config.state_dir, &record.id)?;
    Ok(())
}

/// Podman's precreate stage: the shim's spec edit on a spec read from stdin.
pub fn precreate(config: &Config, input: &[u8]) -> Result<Vec<u8>, Error> {
    let mut spec = Spec::parse(input, "<stdin>".into())?;
    // No shim runs when Podman deletes the container: our poststop hook cleans up.
    if shim::edit(config, &mut spec, Cleanup::PoststopHook)? == Treatment::PassThrough {
        return Ok(input.to_vec());
    }
    Ok(serde_json::to_vec(&spec.value).expect("a JSON value serializes"))
}
