//! Older kernels' code paths on this machine's kernel: the runtime started under `nosys`, a
//! seccomp filter that makes newer syscalls fail with ENOSYS for it and everything it starts
//! (runc, our hook).
use std::{
    os::unix::fs::PermissionsExt,
    path::{Path, PathBuf},
};

use crate::bin;

/// Which mount syscalls a container start may use.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum MountPath {
    /// Whatever this kernel has (mount_setattr: 5.12+).
    Native,
    /// No `mount_setattr`, as on 5.2 - 5.11 (openEuler 22.03's 5.10).
    NoSetattr,
    /// No `open_tree`, `move_mount`, `mount_setattr`, `openat2`, as before 5.2 (4.19, 3.10).
    Classic,
}

impl MountPath {
    pub const ALL: [Self; 3] = [Self::Native, Self::NoSetattr, Self::Classic];

    /// The syscalls hidden.
    pub fn hidden(self) -> &'static [&'static str] {
        match self {
            Self::Native => &[],
            Self::NoSetattr => &["mount_setattr"],
            Self::Classic => &["open_tree", "move_mount", "mount_setattr", "openat2"],
        }
    }

    /// How the hook names the mount API it chose on this path (its `mount_api` log field).
    pub fn api(self) -> &'static str {
        match self {
            Self::Native => "DetachedReadOnly",
            Self::NoSetattr => "AttachThenRemount",
            Self::Classic => "Classic",
        }
    }

    /// The runtime to start containers with: the shim itself, or [`runtime_hiding`] the
    /// newer syscalls.
    pub fn runtime(self, dir: &Path) -> PathBuf {
        if self == Self::Native {
            return bin("npu-container-runtime");
        }
        runtime_hiding(self.hidden(), dir)
    }
}

/// A script in `dir` that runs the shim under `nosys` hiding `hidden` (syscall names, or
/// `bpf_map_create`: see nosys.rs). The shim still finds the hook next to itself (it is
/// exec'd, not copied).
pub fn runtime_hiding(hidden: &[&str], dir: &Path) -> PathBuf {
    let name = hidden.join("-");
    let script = dir.join(format!("runtime-without-{name}"));
    std::fs::write(
        &script,
        format!(
            "#!/bin/sh\nexec {} {} -- {} \"$@\"\n",
            bin("nosys").display(),
            hidden.join(","),
            bin("npu-container-runtime").display()
        ),
    )
    .unwrap();
    std::fs::set_permissions(&script, std::fs::Permissions::from_mode(0o755)).unwrap();
    script
}
