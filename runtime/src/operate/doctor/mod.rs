//! `npu-ctk doctor`: one line per check of a host, each with a verdict and, when something is
//! wrong, the fix.
use std::path::{Path, PathBuf};

use serde::Serialize;

mod cri;

use crate::{
    enforce::guard,
    node::cgroup::Layout,
    node::config::Config,
    node::devices::{FamilyDevices, HostDevices},
    node::trust,
    operate::engines::{self, Engine},
    operate::node_guard,
    start::{
        mounts::{self, MountApi},
        shim,
    },
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Ok,
    /// Nothing to do, but worth knowing (an engine that is not installed).
    Info,
    Warn,
    Fail,
}

#[derive(Debug, Serialize)]
pub struct Check {
    pub name: String,
    pub verdict: Verdict,
    pub detail: String,
    /// What to do about it (empty when all is well).
    pub fix: String,
}

fn check(name: &str, verdict: Verdict, detail: String, fix: &str) -> Check {
    Check {
        name: name.into(),
        verdict,
        detail,
        fix: if matches!(verdict, Verdict::Ok | Verdict::Info) {
            String::new()
        } else {
            fix.into()
        },
    }
}

/// One line per check, with the fix under it when there is one.
pub fn report(checks: &[Check]) -> String {
    let lines: Vec<String> = checks
        .iter()
        .map(|c| {
            let tag = match c.verdict {
                Verdict::Ok => "[ ok ]",
                Verdict::Info => "[info]",
                Verdict::Warn => "[warn]",
                Verdict::Fail => "[FAIL]",
            };
            let fix = if c.fix.is_empty() {
                String::new()
            } else {
                format!("\n       fix: {}", c.fix)
            };
            format!("{tag} {}: {}{fix}", c.name, c.detail)
        })
        .collect();
    lines.join("\n")
}

/// How many checks failed.
pub fn failures(checks: &[Check]) -> usize {
    checks.iter().filter(|c| c.verdict == Verdict::Fail).count()
}

/// Whether this kernel runs the guard: a dry-run load of its variants (nothing is pinned),
/// and what is pinned now.
fn guard_check(config: &Config, layout: Option<&Layout>) -> Check {
    let name = "guard program";
    if let Some(Layout::Legacy { .. }) = layout {
        return check(
            name,
            Verdict::Ok,
            "not used: cgroup v1 only, the v1 devices controller isolates (no node guard \
             either: on pure v1 hosts the shim's confinement is the protection)"
                .into(),
            "",
        );
    }
    let current = guard::version();
    let pinned = match guard::pinned_variant(&config.bpf_dir, &current) {
        Some(v) => format!("version {current} pinned ({v:?} variant)"),
        None => format!("version {current} not pinned yet (the first NPU container pins it)"),
    };
    match guard::probe_load() {
        Ok(guard::Variant::Full) => check(
            name,
            Verdict::Ok,
            format!("this kernel loads the full variant; {pinned}"),
            "",
        ),
        Ok(variant) => check(
            name,
            Verdict::Warn,
            format!(
                "this kernel loads only the {variant:?} variant: {}; {pinned}",
                variant.limits().join("; ")
            ),
            "a kernel whose cgroup device programs may call bpf_get_current_comm, \
             bpf_get_current_pid_tgid and bpf_get_current_ancestor_cgroup_id (e.g. 6.1)",
        ),
        Err(e) if matches!(layout, Some(Layout::Hybrid { .. })) => check(
            name,
            Verdict::Warn,
            format!("{e}: the v1 devices controller isolates alone (no BPF layer, no node guard)"),
            "a kernel whose cgroup device programs may call bpf_get_current_cgroup_id and use \
             ring buffers (5.8+)",
        ),
        Err(e) => check(
            name,
            Verdict::Fail,
            format!("{e}: NPU containers are refused on this pure cgroup v2 host"),
            "a kernel whose cgroup device programs may call bpf_get_current_cgroup_id and use \
             ring buffers (5.8+), or boot with the cgroup v1 devices controller",
        ),
    }
}

/// Whether the container parents present here are guarded by this build's guard.
fn node_guard_check(config: &Config, layout: Option<&Layout>) -> Check {
    let name = "node guard";
    if let Some(Layout::Legacy { .. }) = layout {
        return check(
            name,
            Verdict::Ok,
            "not available on pure cgroup v1 hosts (a v1 child cannot be given more than its \
             parent): the shim's confinement is the protection, containers started around the \
             runtime are not covered"
                .into(),
            "",
        );
    }
    let parents = match node_guard::status(config) {
        Ok(p) => p,
        Err(e) => return check(name, Verdict::Fail, e.to_string(), "see the error"),
    };
    let present: Vec<&node_guard::ParentStatus> = parents.iter().filter(|p| p.present).collect();
    let unguarded: Vec<&str> = present
        .iter()
        .filter(|p| !p.current)
        .map(|p| p.path.as_str())
        .collect();
    let guarded: Vec<&str> = present
        .iter()
        .filter(|p| p.current)
        .map(|p| p.path.as_str())
        .collect();
    if present.is_empty() {
        check(
            name,
            Verdict::Warn,
            "none of the guarded_parents exists yet: containers started around the runtime are \
             not covered"
                .into(),
            "npu-ctk guard install once the engines run (or --cgroup PATH)",
        )
    } else if !unguarded.is_empty() {
        check(
            name,
            Verdict::Warn,
            format!(
                "not guarded by this build: {} (containers started there around the runtime \
                 can open NPUs)",
                unguarded.join(", ")
            ),
            "npu-ctk guard install",
        )
    } else {
        check(
            name,
            Verdict::Ok,
            format!("guarded: {}", guarded.join(", ")),
            "",
        )
    }
}

/// A profile's chip and management checks: Ascend's named `NPUs` and `management devices`,
/// another family's after its word and name (`XPUs (kunlun)`).
fn family_checks(config: &Config, f: &FamilyDevices, ascend: bool) -> [Check; 2] {
    let word = &f.profile.device_word;
    let (chips, management) = if ascend {
        ("NPUs".to_string(), "management devices".to_string())
    } else {
        let name = &f.profile.name;
        (
            format!("{word}s ({name})"),
            format!("management devices ({name})"),
        )
    };
    let driver = if ascend {
        "the Ascend driver".to_string()
    } else {
        format!("the {} driver", f.profile.name)
    };
    let chips = if f.chips.is_empty() {
        check(
            &chips,
            Verdict::Warn,
            format!("none under {}", config.dev_root.display()),
            &format!("install {driver}, or set dev_root"),
        )
    } else {
        check(
            &chips,
            Verdict::Ok,
            format!("{} found ({})", f.chips.len(), f.describe_chips()),
            "",
        )
    };
    let management = if f.missing_management.is_empty() {
        check(
            &management,
            Verdict::Ok,
            format!("{} present", f.management.len()),
            "",
        )
    } else {
        let missing: Vec<String> = f
            .missing_management
            .iter()
            .map(|p| p.display().to_string())
            .collect();
        let key = if ascend {
            "management_devices in the config".to_string()
        } else {
            format!("[profiles.{}] in the config", f.profile.name)
        };
        check(
            &management,
            Verdict::Fail,
            format!("missing: {}", missing.join(", ")),
            &format!("install {driver}, or fix {key}"),
        )
    };
    [chips, management]
}

/// Whether the hook can make read-only driver mounts here: the mount syscalls probed, and a
/// real bind mount made the way a container start makes it, in a private mount namespace of
/// a child process.
fn mounts_check() -> Check {
    let name = "driver mounts";
    let api = MountApi::probe();
    match in_private_mount_namespace(|| mounts::self_test(api)) {
        Ok(()) => check(name, Verdict::Ok, api.describe().into(), ""),
        Err(e) => check(
            name,
            Verdict::Fail,
            format!("{}: {e}", api.describe()),
            "NPU containers with driver mounts cannot start here; run as root, or use NODRV",
        ),
    }
}

/// Runs `f` in a forked child inside a new, private mount namespace; its error comes back
/// through a pipe.
fn in_private_mount_namespace(f: impl FnOnce() -> Result<(), String>) -> Result<(), String> {
    use std::io::{Read, Write};
    let (mut reader, writer) = std::io::pipe().map_err(|e| format!("cannot make a pipe: {e}"))?;
    // SAFETY: npu-ctk runs its checks on its only thread, so the child inherits no lock held
    // by another thread; it only makes syscalls and leaves with _exit.
    match unsafe { nix::unistd::fork() }.map_err(|e| format!("cannot fork: {e}"))? {
        nix::unistd::ForkResult::Child => {
            drop(reader);
            let result = nix::sched::unshare(nix::sched::CloneFlags::CLONE_NEWNS)
                .map_err(|e| format!("cannot make a mount namespace: {e}"))
                .and_then(|()| {
                    nix::mount::mount(
                        None::<&str>,
                        "/",
                        None::<&str>,
                        nix::mount::MsFlags::MS_REC | nix::mount::MsFlags::MS_PRIVATE,
                        None::<&str>,
                    )
                    .map_err(|e| format!("cannot make the mounts private: {e}"))
                })
                .and_then(|()| f());
            let mut writer = writer;
            let code = match result {
                Ok(()) => 0,
                Err(e) => {
                    let _ = writer.write_all(e.as_bytes());
                    1
                }
            };
            // SAFETY: _exit ends the child without running the parent's destructors twice.
            unsafe { libc::_exit(code) }
        }
        nix::unistd::ForkResult::Parent { child } => {
            drop(writer);
            let mut message = String::new();
            let _ = reader.read_to_string(&mut message);
            match nix::sys::wait::waitpid(child, None) {
                Ok(nix::sys::wait::WaitStatus::Exited(_, 0)) => Ok(()),
                Ok(_) if !message.is_empty() => Err(message),
                Ok(status) => Err(format!("the test process ended with {status:?}")),
                Err(e) => Err(format!("cannot wait for the test process: {e}")),
            }
        }
    }
}

/// The trust checks (node::trust): the files that decide what root runs and what reaches
/// containers, and the directories of records and pins.
fn trust_checks(config: &Config, runtime_path: &Path) -> Vec<Check> {
    let fix_file = "chown root FILE and every directory above it, and chmod go-w them";
    let file = |name: &str, path: &Path, missing_ok: &str| match trust::trusted_file(path) {
        Ok(()) => check(
            name,
            Verdict::Ok,
            format!("{}: owned by root, written by nobody else", path.display()),
            "",
        ),
        Err(e) if trust::is_missing(&e) => check(name, Verdict::Ok, missing_ok.into(), ""),
        Err(e) => check(name, Verdict::Fail, e.to_string(), fix_file),
    };
    let mut out = vec![file(
        "config file trust",
        &Config::path(),
        "no config file: defaults",
    )];
    let lists: Vec<PathBuf> = std::fs::read_dir(&config.mount_list_dir)
        .into_iter()
        .flatten()
        .flatten()
        .map(|e| e.path())
        .filter(|p| p.extension().is_some_and(|x| x == "list"))
        .collect();
    let bad: Vec<String> = lists
        .iter()
        .filter_map(|p| trust::trusted_file(p).err().map(|e| e.to_string()))
        .collect();
    out.push(if bad.is_empty() {
        check(
            "mount list trust",
            Verdict::Ok,
            format!(
                "{} list(s) in {}, all root's",
                lists.len(),
                config.mount_list_dir.display()
            ),
            "",
        )
    } else {
        check("mount list trust", Verdict::Fail, bad.join("; "), fix_file)
    });
    let hook = runtime_path.with_file_name(shim::HOOK_BINARY);
    for (name, path) in [
        ("shim binary trust", runtime_path),
        ("hook binary trust", &hook),
    ] {
        out.push(file(name, path, "missing (see runtime binaries)"));
    }
    for (name, dir) in [
        ("state_dir", &config.state_dir),
        ("bpf_dir", &config.bpf_dir),
    ] {
        out.push(match trust::check_private_dir(dir) {
            Ok(true) => check(
                name,
                Verdict::Ok,
                format!("{}: root's, writable by nobody else", dir.display()),
                "",
            ),
            Ok(false) => check(
                name,
                Verdict::Ok,
                format!(
                    "{}: made 0700 root with the first NPU container",
                    dir.display()
                ),
                "",
            ),
            Err(e) => check(
                name,
                Verdict::Fail,
                e.to_string(),
                "remove it (it is recreated 0700 root), or chown root and chmod 0700 it",
            ),
        });
    }
    out
}

/// Runs every check. `runtime_path` is the shim engines should point at; `containerd_config`
/// the containerd config whose CRI plugin the kubelet talks to, when the operator names one
/// (then the CRI checks run whatever the node looks like).
pub fn run(config: &Config, runtime_path: &Path, containerd_config: Option<&Path>) -> Vec<Check> {
    let mut out = trust_checks(config, runtime_path);
    let layout = Layout::detect();
    out.push(match &layout {
        Ok(layout) => check("cgroup mode", Verdict::Ok, layout.name().into(), ""),
        Err(e) => check(
            "cgroup mode",
            Verdict::Fail,
            e.to_string(),
            "mount cgroup2 at /sys/fs/cgroup or the v1 devices controller",
        ),
    });
    let bpffs = nix::sys::statfs::statfs("/sys/fs/bpf")
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC);
    out.push(if bpffs {
        check("bpffs", Verdict::Ok, "mounted at /sys/fs/bpf".into(), "")
    } else {
        check("bpffs", Verdict::Warn, "not mounted at /sys/fs/bpf".into(), "nothing to do: the hook mounts it for the first NPU container (or: mount -t bpf bpf /sys/fs/bpf)")
    });
    out.push(if config.confine_unnamed {
        check(
            "confinement",
            Verdict::Ok,
            "containers that name no NPU but could reach one are confined to none".into(),
            "",
        )
    } else {
        check(
            "confinement",
            Verdict::Warn,
            "confine_unnamed = false: a privileged container that names no NPU opens every NPU"
                .into(),
            "set confine_unnamed = true in the config (the default)",
        )
    });
    out.push(guard_check(config, layout.as_ref().ok()));
    out.push(node_guard_check(config, layout.as_ref().ok()));
    out.push(mounts_check());
    match HostDevices::discover(config) {
        Ok(host) => {
            // Ascend's checks as ever when the host has its nodes or no family's at all;
            // every other profile's when the host has some of its nodes.
            let none_active = host.active().next().is_none();
            for f in &host.families {
                let ascend = f.profile.name == "ascend";
                if !(f.is_active() || ascend && none_active) {
                    continue;
                }
                out.extend(family_checks(config, f, ascend));
            }
        }
        Err(e) => out.push(check(
            "NPUs",
            Verdict::Fail,
            e.to_string(),
            "fix dev_root or chip_pattern in the config",
        )),
    }
    let base = config.mount_list_dir.join("base.list");
    out.push(if base.exists() {
        check(
            "mount lists",
            Verdict::Ok,
            format!("{} present", base.display()),
            "",
        )
    } else {
        check(
            "mount lists",
            Verdict::Warn,
            format!(
                "{} missing: containers get no driver mounts by default",
                base.display()
            ),
            "write the driver paths, one per line, into base.list",
        )
    });
    out.push(match shim::find_runtime(config) {
        Ok(p) => check(
            "low-level runtime",
            Verdict::Ok,
            p.display().to_string(),
            "",
        ),
        Err(e) => check(
            "low-level runtime",
            Verdict::Fail,
            e.to_string(),
            "install runc or crun, or fix runtimes in the config",
        ),
    });
    let hook = runtime_path.with_file_name(shim::HOOK_BINARY);
    out.push(if runtime_path.is_file() && hook.is_file() {
        check(
            "runtime binaries",
            Verdict::Ok,
            format!("{} and {}", runtime_path.display(), hook.display()),
            "",
        )
    } else {
        check(
            "runtime binaries",
            Verdict::Fail,
            format!("{} or {} missing", runtime_path.display(), hook.display()),
            "install npu-container-runtime and npu-container-hook side by side",
        )
    });
    // A containerd that only serves Docker needs no handler: one line says so, in place of
    // the CRI checks. The CRI checks run when the operator names containerd's config, on a
    // Kubernetes node, or once the handler is registered.
    let cri_wanted = containerd_config.is_some() || cri::kubernetes_node();
    let mut cri_checks = cri_wanted;
    for engine in [
        Engine::Docker,
        Engine::Containerd,
        Engine::Podman,
        Engine::Crio,
    ] {
        let config_path = match (engine, containerd_config) {
            (Engine::Containerd, Some(path)) => path,
            _ => Path::new(engine.default_config()),
        };
        let name = format!("{engine:?} configured").to_lowercase();
        let lower = format!("{engine:?}").to_lowercase();
        if !engine.installed() && !config_path.exists() {
            out.push(check(
                &name,
                Verdict::Info,
                format!("{lower} is not installed ({} not found)", engine.program()),
                "",
            ));
            continue;
        }
        let req = engines::Request {
            engine,
            config: config_path,
            runtime_path,
            set_as_default: false,
            dry_run: true,
        };
        out.push(match engines::apply(&req, true) {
            Ok(o) if !o.changed => {
                cri_checks |= engine == Engine::Containerd;
                check(
                    &name,
                    Verdict::Ok,
                    format!("runtime \"npu\" in {}", o.path.display()),
                    "",
                )
            }
            Ok(o) if engine == Engine::Containerd && !cri_wanted => check(
                &name,
                Verdict::Info,
                format!(
                    "no runtime \"npu\" in {}: no kubelet on this node, so containerd serves \
                     other engines (Docker); its handler is needed only for Kubernetes or ctr \
                     (npu-ctk runtime configure --runtime=containerd)",
                    o.path.display()
                ),
                "",
            ),
            Ok(o) => check(
                &name,
                Verdict::Warn,
                format!("no runtime \"npu\" in {}", o.path.display()),
                &format!("npu-ctk runtime configure --runtime={lower}"),
            ),
            Err(e) => check(
                &name,
                Verdict::Warn,
                e.to_string(),
                "fix the file, then run npu-ctk runtime configure",
            ),
        });
    }
    if cri_checks {
        let path = containerd_config.unwrap_or(Path::new(Engine::Containerd.default_config()));
        out.extend(cri::checks(config, path));
    }
    out
}
