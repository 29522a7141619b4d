//! `npu-ctk doctor`: one line per check of a host, each with a verdict and, when something is
//! wrong, the fix.
use std::path::Path;

use serde::Serialize;

use crate::{
    enforce::guard,
    node::cgroup::Layout,
    node::config::Config,
    node::devices::HostDevices,
    operate::engines::{self, Engine},
    start::shim,
};

#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Verdict {
    Ok,
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
        fix: if verdict == Verdict::Ok {
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

/// Runs every check. `runtime_path` is the shim engines should point at.
pub fn run(config: &Config, runtime_path: &Path) -> Vec<Check> {
    let mut out = Vec::new();
    out.push(match Layout::detect() {
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
    let current = guard::version();
    let versions = guard::versions(&config.bpf_dir).unwrap_or_default();
    out.push(if versions.contains(&current) {
        let older = versions.len() - 1;
        check(
            "guard program",
            Verdict::Ok,
            format!(
                "version {current} pinned under {} ({older} older version(s) still pinned)",
                config.bpf_dir.display()
            ),
            "",
        )
    } else {
        check(
            "guard program",
            Verdict::Warn,
            format!("version {current} not loaded yet"),
            "nothing to do: it is loaded and pinned with the first NPU container",
        )
    });
    match HostDevices::discover(config) {
        Ok(host) => {
            out.push(if host.chips.is_empty() {
                check(
                    "NPUs",
                    Verdict::Warn,
                    format!("none under {}", config.dev_root.display()),
                    "install the Ascend driver, or set dev_root",
                )
            } else {
                check(
                    "NPUs",
                    Verdict::Ok,
                    format!("{} found ({})", host.chips.len(), host.describe_chips()),
                    "",
                )
            });
            out.push(if host.missing_management.is_empty() {
                check(
                    "management devices",
                    Verdict::Ok,
                    format!("{} present", host.management.len()),
                    "",
                )
            } else {
                let missing: Vec<String> = host
                    .missing_management
                    .iter()
                    .map(|p| p.display().to_string())
                    .collect();
                check(
                    "management devices",
                    Verdict::Fail,
                    format!("missing: {}", missing.join(", ")),
                    "install the Ascend driver, or fix management_devices in the config",
                )
            });
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
    for engine in [
        Engine::Docker,
        Engine::Containerd,
        Engine::Podman,
        Engine::Crio,
    ] {
        let config_path = Path::new(engine.default_config());
        let name = format!("{engine:?} configured").to_lowercase();
        let req = engines::Request {
            engine,
            config: config_path,
            runtime_path,
            set_as_default: false,
            dry_run: true,
        };
        out.push(match engines::apply(&req, true) {
            Ok(o) if !o.changed => check(
                &name,
                Verdict::Ok,
                format!("runtime \"npu\" in {}", o.path.display()),
                "",
            ),
            Ok(o) => check(
                &name,
                Verdict::Warn,
                format!("no runtime \"npu\" in {}", o.path.display()),
                &format!(
                    "npu-ctk runtime configure --runtime={}",
                    format!("{engine:?}").to_lowercase()
                ),
            ),
            Err(e) => check(
                &name,
                Verdict::Warn,
                e.to_string(),
                "fix the file, then run npu-ctk runtime configure",
            ),
        });
    }
    out
}
