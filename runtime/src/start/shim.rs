//! What `npu-container-runtime` does around the real runtime: on `create`/`run`, write the
//! NPU grant into the spec; after `update`, re-check isolation.
use std::path::{Path, PathBuf};

use crate::{
    enforce::isolation,
    error::Error,
    node::cgroup::{self, Layout},
    node::config::{self, Config},
    node::devices::HostDevices,
    node::rules::{Access, RuleEntry},
    node::state,
    node::trust,
    start::names::{Names, Treatment},
    start::request::Request,
    start::spec::{Cleanup, Edit, HookCommand, Spec, SpecError},
};

pub const HOOK_BINARY: &str = "npu-container-hook";

/// The environment runtimes run our hook with (hooks do not inherit the runtime's).
const HOOK_PATH_ENV: &str = "PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin";

/// Where runtimes live when the caller's PATH does not say: engines do not promise one
/// (Podman's cleanup calls the runtime with an empty PATH).
const SYSTEM_PATH: [&str; 6] = [
    "/usr/local/sbin",
    "/usr/local/bin",
    "/usr/sbin",
    "/usr/bin",
    "/sbin",
    "/bin",
];

/// Where programs are looked up: PATH, then the standard system directories.
pub fn search_dirs() -> Vec<PathBuf> {
    let path = std::env::var_os("PATH").unwrap_or_default();
    std::env::split_paths(&path)
        .chain(SYSTEM_PATH.iter().map(PathBuf::from))
        .collect()
}

/// The first executable of `config.runtimes` (a path, or a name looked up in
/// [`search_dirs`]).
pub fn find_runtime(config: &Config) -> Result<PathBuf, Error> {
    let ours = std::env::current_exe().ok();
    let dirs = search_dirs();
    for name in &config.runtimes {
        let candidates: Vec<PathBuf> = if name.contains('/') {
            vec![PathBuf::from(name)]
        } else {
            dirs.iter().map(|d| d.join(name)).collect()
        };
        for candidate in candidates {
            // Never exec ourselves (a runtime named like the shim would loop).
            if is_executable(&candidate) && Some(&candidate) != ours.as_ref() {
                // Root executes it for every container: only root may have written it.
                trust::trusted_file(&candidate)?;
                return Ok(candidate);
            }
        }
    }
    Err(Error::NoRuntime {
        tried: config.runtimes.clone(),
    })
}

fn is_executable(path: &Path) -> bool {
    use std::os::unix::fs::PermissionsExt;
    std::fs::metadata(path).is_ok_and(|m| m.is_file() && m.permissions().mode() & 0o111 != 0)
}

/// How runtimes should call our hook: the `npu-container-hook` next to this executable,
/// with our configuration file if one was named.
pub fn hook_command() -> Result<HookCommand, Error> {
    let exe = std::env::current_exe().map_err(|source| Error::Exec {
        path: "/proc/self/exe".into(),
        source,
    })?;
    let path = exe.with_file_name(HOOK_BINARY);
    if !path.is_file() {
        return Err(Error::NoHook(path));
    }
    // The runtime runs it as root for the container: only root may have written it.
    trust::trusted_file(&path)?;
    Ok(HookCommand {
        path,
        env: hook_env(),
    })
}

/// The environment our hook runs with (runtimes do not pass theirs on): a PATH, and the
/// configuration file this process was told about, if any.
pub fn hook_env() -> Vec<String> {
    let mut env = vec![HOOK_PATH_ENV.to_string()];
    if let Some(config) = std::env::var_os(config::PATH_ENV) {
        env.push(format!("{}={}", config::PATH_ENV, config.to_string_lossy()));
    }
    env
}

/// Adds the devices (of `host`), grants, hooks and env of `requests` (by index into
/// `config.profiles()`) to the spec.
pub fn edit_spec(
    config: &Config,
    host: &HostDevices,
    spec: &mut Spec,
    requests: &[(usize, Request)],
    hook: &HookCommand,
    cleanup: Cleanup,
) -> Result<(), Error> {
    let mut devices = Vec::new();
    let mut env = Vec::new();
    for (family, request) in requests {
        let family = &host.families[*family];
        devices.extend(family.select(
            request.devices.indices(),
            request.virtual_devices,
            &config.dev_root,
        )?);
        // Refuse unknown or malformed mount lists now, before the runtime creates anything
        // (the hook reads them again when it mounts).
        if !request.no_driver {
            crate::start::mounts::read_lists(
                &config.mount_list_dir,
                &request.mount_lists,
                request.mount_lists_explicit,
            )?;
        }
        env.extend(family.profile.env.iter().cloned());
    }
    // The spec carries each node's mode and owner: as they are now.
    crate::node::devices::refresh(&mut devices);
    spec.apply(&Edit {
        devices: &devices,
        hook,
        env,
        cleanup,
    })?;
    Ok(())
}

/// Decides what a container gets (module `names`) and edits its spec for it, in memory:
/// a request's devices, rules, hooks and env; for exact device entries alone or a confined
/// container, only the hooks. A container left alone is not touched. `cleanup` says whether
/// a poststop hook is needed (nothing of ours runs when the container is deleted).
pub fn edit(config: &Config, spec: &mut Spec, cleanup: Cleanup) -> Result<Treatment, Error> {
    // A spec that allows nothing beyond mknod and lists no device cannot touch an NPU: no
    // need to look at the host's devices.
    let rules = spec.device_rules()?;
    let opens = |e: &RuleEntry| {
        e.allow && (e.rule.access.contains(Access::READ) || e.rule.access.contains(Access::WRITE))
    };
    let env = spec.env()?;
    let profiles = config.profiles();
    let asks = env.iter().any(|e| profiles.iter().any(|p| p.asks(e)));
    if !asks && !rules.iter().any(opens) && spec.devices().is_empty() {
        return Ok(Treatment::PassThrough);
    }
    let host = HostDevices::cached(config)?;
    let names = Names::of(spec, &host.classes(), &profiles, config.env_requests)?;
    if let Some(refused) = &names.refused {
        // The engine's log is where the one who started the container looks.
        tracing::warn!(
            refused,
            "NPU request refused: the container gets no NPU it asked for this way"
        );
    }
    let treatment = names.treatment(config.confine_unnamed);
    match treatment {
        Treatment::PassThrough => {}
        Treatment::Grant if !names.requests.is_empty() => {
            edit_spec(
                config,
                &host,
                spec,
                &names.requests,
                &hook_command()?,
                cleanup,
            )?;
        }
        // Named by exact entries only, or confined: the runtime already has the devices and
        // rules it needs; the hook registers the container.
        Treatment::Grant | Treatment::Confine => spec.apply(&Edit {
            devices: &[],
            hook: &hook_command()?,
            env: Vec::new(),
            cleanup,
        })?,
    }
    Ok(treatment)
}

/// The `create`/`run` step: edit `bundle/config.json` in place (atomically) as [`edit`]
/// decides. A container left alone is not rewritten at all (its spec stays byte-identical).
pub fn prepare_bundle(
    config: &Config,
    bundle: &Path,
    cleanup: Cleanup,
) -> Result<Treatment, Error> {
    let (path, bytes) = match Spec::read_bytes(bundle) {
        // No spec: nothing of ours to do, and the runtime says what is wrong with its own
        // words (a missing bundle, a wrong argument), as it would without us.
        Err(SpecError::Read { source, .. }) if source.kind() == std::io::ErrorKind::NotFound => {
            return Ok(Treatment::PassThrough);
        }
        other => other?,
    };
    let mut spec = Spec::parse(&bytes, path)?;
    let treatment = edit(config, &mut spec, cleanup)?;
    if treatment != Treatment::PassThrough {
        spec.write_atomic()?;
    }
    Ok(treatment)
}

/// After `update`: make sure the container's isolation is still in place (re-attach the guard,
/// re-apply v1 rules). A container we do not know is left alone.
pub fn recheck(config: &Config, id: &str) -> Result<bool, Error> {
    let Some(record) = state::read(&config.state_dir, id)? else {
        return Ok(false);
    };
    isolation::reapply(config, &record.enforced, &record.grants)?;
    Ok(true)
}

/// Whether container `id` has a record (it was prepared by our hook and not cleaned up).
pub fn has_record(config: &Config, id: &str) -> bool {
    state::record_path(&config.state_dir, id).is_ok_and(|p| p.symlink_metadata().is_ok())
}

/// After the runtime's `delete` of `id`, or a `create` that failed: removes the container's
/// grants and record once its cgroup is gone. The runtime's word is not enough: `delete
/// --force` of an id it does not know succeeds (another root may run a container of that
/// id), and a refused `delete` leaves a running container. Returns whether a record went.
pub fn cleanup(config: &Config, id: &str) -> Result<bool, Error> {
    let Some(record) = state::read(&config.state_dir, id)? else {
        return Ok(false);
    };
    let gone = match record.enforced.gone_at_recorded_path() {
        Some(gone) => gone,
        // The recorded path does not answer here (another mount namespace?): by id.
        None => {
            let live = Layout::detect()?
                .unified()
                .map(|m| cgroup::live_ids(&m.mount_point));
            record.enforced.gone(live.as_ref())
        }
    };
    if !gone {
        return Ok(false);
    }
    isolation::release(config, &record.enforced, &record.grants)?;
    state::remove(&config.state_dir, &record.id)?;
    Ok(true)
}
