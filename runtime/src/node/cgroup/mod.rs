//! How device control works on this host, and where a container's cgroups are.
//!
//! We follow what the low-level runtime does: runc treats the host as cgroup v2 exactly when
//! `/sys/fs/cgroup` is a cgroup2 mount; otherwise it drives the v1 `devices` controller, and on
//! hybrid hosts also places the container in the unified tree, where our guard adds a second,
//! bpftool-visible layer.
pub mod mountinfo;

use std::{
    collections::BTreeSet,
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
};

use mountinfo::MountInfo;

/// Where runc and friends look to decide the cgroup mode.
pub const CGROUP_ROOT: &str = "/sys/fs/cgroup";

#[derive(Debug, thiserror::Error)]
pub enum CgroupError {
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "no device control on this host: {CGROUP_ROOT} is not cgroup2 and no cgroup v1 devices controller is mounted"
    )]
    NoDeviceControl,
    #[error("malformed line in {path}: {line:?}")]
    Malformed { path: PathBuf, line: String },
    #[error("process {pid} has no {what} cgroup in /proc/{pid}/cgroup")]
    NotInCgroup { pid: u32, what: &'static str },
    #[error(
        "process {pid} is in the root {what} cgroup; refusing to change device access for the whole host"
    )]
    RootCgroup { pid: u32, what: &'static str },
    #[error("cgroup path {path} of process {pid} is outside the mount at {mount}")]
    OutsideMount {
        pid: u32,
        path: String,
        mount: PathBuf,
    },
}

/// `/proc/self/ns/cgroup`'s inode number in the initial cgroup namespace (the kernel's
/// `PROC_CGROUP_INIT_INO`, fixed).
const INITIAL_CGROUP_NS: u64 = 0xEFFF_FFFB;

/// The inode number of a cgroup hierarchy's root directory (the first kernfs node).
const HIERARCHY_ROOT_INO: u64 = 1;

/// A layout found by [`Layout::probe`].
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Probed {
    pub layout: Layout,
    /// The paths `/proc/PID/cgroup` shows map onto the mounts as they are (see `probe`).
    pub exact: bool,
}

/// How device access is controlled on this host.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum Layout {
    /// Pure cgroup v2: device access is decided by BPF programs.
    Unified { root: Mount },
    /// v1 controllers with the v2 tree mounted beside them: the v1 devices controller decides,
    /// and BPF programs on the unified tree apply too.
    Hybrid { devices: Mount, unified: Mount },
    /// v1 only.
    Legacy { devices: Mount },
}

/// A cgroup filesystem mount: where it is and which cgroup path its root shows.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Mount {
    pub mount_point: PathBuf,
    pub root: String,
}

impl Mount {
    fn from_info(m: &MountInfo) -> Self {
        Self {
            mount_point: m.mount_point.clone(),
            root: m.root.clone(),
        }
    }

    /// Directory of the cgroup `path` (as `/proc/PID/cgroup` shows it) under this mount;
    /// `None` when the mount does not show it.
    pub fn dir(&self, path: &str) -> Option<PathBuf> {
        let rel = if self.root == "/" {
            path.strip_prefix('/')?
        } else {
            let rest = path.strip_prefix(self.root.as_str())?;
            if !(rest.is_empty() || rest.starts_with('/')) {
                return None;
            }
            rest.trim_start_matches('/')
        };
        if rel.split('/').any(|c| c == "..") {
            return None;
        }
        Some(if rel.is_empty() {
            self.mount_point.clone()
        } else {
            self.mount_point.join(rel)
        })
    }

    fn dir_of(&self, pid: u32, path: &str) -> Result<PathBuf, CgroupError> {
        self.dir(path).ok_or_else(|| CgroupError::OutsideMount {
            pid,
            path: path.into(),
            mount: self.mount_point.clone(),
        })
    }
}

impl Layout {
    /// Detects the layout from `/sys/fs/cgroup` and this process's mountinfo.
    pub fn detect() -> Result<Self, CgroupError> {
        let unified_root = nix::sys::statfs::statfs(CGROUP_ROOT)
            .map(|s| s.filesystem_type() == nix::sys::statfs::CGROUP2_SUPER_MAGIC)
            .unwrap_or(false);
        let path = Path::new("/proc/self/mountinfo");
        let text = read(path)?;
        let mounts = mountinfo::parse(&text).map_err(|line| CgroupError::Malformed {
            path: path.into(),
            line,
        })?;
        Self::from_mounts(unified_root, &mounts)
    }

    /// The layout from the filesystem types at the places runc and systemd mount cgroups
    /// (`/sys/fs/cgroup` cgroup2; or a tmpfs there with the v1 `devices` and the v2 `unified`
    /// trees below it), by `statfs` alone: the mount table of a node running many containers
    /// is long, and reading it cost more than anything else the hook did for a container.
    /// Their roots are taken to be `/`. That is known when each mount point is its
    /// hierarchy's root directory (inode 1) and this process is in the initial cgroup
    /// namespace (so `/proc/PID/cgroup` paths start at that root): then `exact` is true.
    /// Otherwise a container's cgroups found through them must be shown to hold it
    /// ([`ContainerCgroups::hold`]). `None`: another arrangement, for [`Self::detect`].
    pub fn probe() -> Option<Probed> {
        use nix::sys::statfs::{CGROUP_SUPER_MAGIC, CGROUP2_SUPER_MAGIC, TMPFS_MAGIC, statfs};
        let fs = |path: &Path| statfs(path).ok().map(|s| s.filesystem_type());
        let at = |path: &Path| Mount {
            mount_point: path.to_path_buf(),
            root: "/".into(),
        };
        let root = Path::new(CGROUP_ROOT);
        let here = fs(root)?;
        let (layout, points) = if here == CGROUP2_SUPER_MAGIC {
            (Self::Unified { root: at(root) }, vec![root.to_path_buf()])
        } else {
            let (devices, unified) = (root.join("devices"), root.join("unified"));
            if !(here == TMPFS_MAGIC
                && fs(&devices)? == CGROUP_SUPER_MAGIC
                && fs(&unified)? == CGROUP2_SUPER_MAGIC)
            {
                return None;
            }
            let layout = Self::Hybrid {
                devices: at(&devices),
                unified: at(&unified),
            };
            (layout, vec![devices, unified])
        };
        let initial_ns =
            std::fs::metadata("/proc/self/ns/cgroup").is_ok_and(|m| m.ino() == INITIAL_CGROUP_NS);
        let exact = initial_ns
            && points
                .iter()
                .all(|p| std::fs::metadata(p).is_ok_and(|m| m.ino() == HIERARCHY_ROOT_INO));
        Some(Probed { layout, exact })
    }

    /// Decides the layout from whether `/sys/fs/cgroup` is cgroup2 and the mount table.
    pub fn from_mounts(unified_root: bool, mounts: &[MountInfo]) -> Result<Self, CgroupError> {
        let root = Path::new(CGROUP_ROOT);
        if unified_root {
            // The last mount at /sys/fs/cgroup is the visible one.
            if let Some(m) = mounts
                .iter()
                .rev()
                .find(|m| m.fs_type == "cgroup2" && m.mount_point == root)
            {
                return Ok(Self::Unified {
                    root: Mount::from_info(m),
                });
            }
        }
        let devices = mounts
            .iter()
            .rev()
            .find(|m| m.fs_type == "cgroup" && m.super_options.iter().any(|o| o == "devices"));
        let unified = mounts.iter().rev().find(|m| m.fs_type == "cgroup2");
        match (devices, unified) {
            (Some(d), Some(u)) => Ok(Self::Hybrid {
                devices: Mount::from_info(d),
                unified: Mount::from_info(u),
            }),
            (Some(d), None) => Ok(Self::Legacy {
                devices: Mount::from_info(d),
            }),
            (None, _) => Err(CgroupError::NoDeviceControl),
        }
    }

    /// The unified (cgroup v2) tree, where BPF device programs apply; `None` on v1-only hosts.
    pub fn unified(&self) -> Option<&Mount> {
        match self {
            Self::Unified { root } => Some(root),
            Self::Hybrid { unified, .. } => Some(unified),
            Self::Legacy { .. } => None,
        }
    }

    pub fn name(&self) -> &'static str {
        match self {
            Self::Unified { .. } => "cgroup v2 (unified)",
            Self::Hybrid { .. } => "cgroup v1 devices controller + v2 tree (hybrid)",
            Self::Legacy { .. } => "cgroup v1 (legacy)",
        }
    }

    /// The cgroups of process `pid` that device enforcement acts on.
    pub fn container_cgroups(&self, pid: u32) -> Result<ContainerCgroups, CgroupError> {
        let path = PathBuf::from(format!("/proc/{pid}/cgroup"));
        let text = read(&path)?;
        let entries = parse_proc_cgroup(&text).map_err(|line| CgroupError::Malformed {
            path: path.clone(),
            line,
        })?;
        let v2_path = || {
            entries
                .iter()
                .find(|e| e.hierarchy == 0 && e.controllers.is_empty())
                .map(|e| e.path.as_str())
        };
        let devices_path = || {
            entries
                .iter()
                .find(|e| e.controllers.iter().any(|c| c == "devices"))
                .map(|e| e.path.as_str())
        };
        let unified_dir = |mount: &Mount, path: &str| -> Result<UnifiedCgroup, CgroupError> {
            let dir = mount.dir_of(pid, path)?;
            let id = std::fs::metadata(&dir)
                .map_err(|source| CgroupError::Read {
                    path: dir.clone(),
                    source,
                })?
                .ino();
            Ok(UnifiedCgroup { dir, id })
        };
        match self {
            Self::Unified { root } => {
                let path = v2_path().ok_or(CgroupError::NotInCgroup {
                    pid,
                    what: "cgroup v2",
                })?;
                if path == root.root {
                    return Err(CgroupError::RootCgroup {
                        pid,
                        what: "cgroup v2",
                    });
                }
                Ok(ContainerCgroups {
                    unified: Some(unified_dir(root, path)?),
                    devices_v1: None,
                })
            }
            Self::Hybrid { devices, unified } => {
                let devices_dir = v1_devices_dir(pid, devices, devices_path())?;
                // Only a container with its own unified cgroup gets the BPF layer: attaching at
                // the root would touch every process on the host.
                let unified = match v2_path() {
                    Some(path) if path != unified.root => Some(unified_dir(unified, path)?),
                    _ => None,
                };
                Ok(ContainerCgroups {
                    unified,
                    devices_v1: Some(devices_dir),
                })
            }
            Self::Legacy { devices } => Ok(ContainerCgroups {
                unified: None,
                devices_v1: Some(v1_devices_dir(pid, devices, devices_path())?),
            }),
        }
    }
}

fn v1_devices_dir(pid: u32, mount: &Mount, path: Option<&str>) -> Result<PathBuf, CgroupError> {
    let what = "v1 devices";
    let path = path.ok_or(CgroupError::NotInCgroup { pid, what })?;
    if path == mount.root {
        return Err(CgroupError::RootCgroup { pid, what });
    }
    mount.dir_of(pid, path)
}

/// A container's place in the unified tree.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct UnifiedCgroup {
    pub dir: PathBuf,
    /// The cgroup id (the directory's inode number on cgroup2), as BPF helpers report it.
    pub id: u64,
}

/// The cgroups device enforcement acts on for one container.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerCgroups {
    pub unified: Option<UnifiedCgroup>,
    pub devices_v1: Option<PathBuf>,
}

impl ContainerCgroups {
    /// Whether process `pid` is in each of these cgroups (their `cgroup.procs` list it).
    pub fn hold(&self, pid: u32) -> bool {
        let holds = |dir: &Path| {
            read(&dir.join("cgroup.procs"))
                .is_ok_and(|text| text.lines().any(|l| l.trim().parse() == Ok(pid)))
        };
        self.unified.as_ref().is_none_or(|u| holds(&u.dir))
            && self.devices_v1.as_deref().is_none_or(holds)
    }
}

/// A container as its cgroup path names it: the engine that placed it there and its id.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct NamedContainer {
    pub engine: &'static str,
    pub id: String,
}

/// The container a cgroup path belongs to, from the engines' naming: systemd scopes
/// (`docker-ID.scope`, `cri-containerd-ID.scope`, `crio-ID.scope`, `libpod-ID.scope`) and
/// cgroupfs paths (`/docker/ID`, `/libpod_parent/libpod-ID`, `/kubepods/.../podUID/ID`,
/// containerd's `/NAMESPACE/ID`).
pub fn container_of(path: &str) -> Option<NamedContainer> {
    let mut parts = path.trim_end_matches('/').rsplit('/');
    let last = parts.next().filter(|l| !l.is_empty())?;
    let parent = parts.next().unwrap_or_default();
    let named = |engine, id: &str| {
        Some(NamedContainer {
            engine,
            id: id.to_string(),
        })
    };
    for (prefix, engine) in [
        ("docker-", "docker"),
        ("cri-containerd-", "containerd (CRI)"),
        ("crio-", "cri-o"),
        ("libpod-", "podman"),
    ] {
        if let Some(id) = last.strip_prefix(prefix) {
            return named(engine, id.strip_suffix(".scope").unwrap_or(id));
        }
    }
    if path.starts_with("/kubepods") {
        return named("kubernetes", last);
    }
    if parent.contains("docker") {
        return named("docker", last);
    }
    if parent.is_empty() {
        return None;
    }
    // ctr and other containerd clients: /NAMESPACE/ID.
    named("containerd", last)
}

/// Visits every cgroup directory under `root` with its inode number (on cgroup2, the cgroup
/// id), until `visit` returns false.
fn walk(root: &Path, mut visit: impl FnMut(&Path, u64) -> bool) {
    let mut stack = vec![root.to_path_buf()];
    while let Some(dir) = stack.pop() {
        if let Ok(meta) = std::fs::metadata(&dir)
            && !visit(&dir, meta.ino())
        {
            return;
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
}

/// Ids of every cgroup under `root` (directory inode numbers on cgroup2 are cgroup ids).
pub fn live_ids(root: &Path) -> BTreeSet<u64> {
    let mut ids = BTreeSet::new();
    walk(root, |_, id| {
        ids.insert(id);
        true
    });
    ids
}

/// The path (as `/proc/PID/cgroup` shows it) of the cgroup with id `id` under `mount`, found by
/// walking the tree (ids are directory inode numbers).
pub fn path_of_id(mount: &Mount, id: u64) -> Option<String> {
    let mut found = None;
    walk(&mount.mount_point, |dir, ino| {
        if ino == id {
            found = Some(dir.to_path_buf());
        }
        found.is_none()
    });
    let rel = found?.strip_prefix(&mount.mount_point).ok()?.to_path_buf();
    let root = mount.root.trim_end_matches('/');
    Some(format!("{root}/{}", rel.display()))
}

/// One line of `/proc/PID/cgroup`: `hierarchy-id:controller-list:path`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ProcCgroup {
    pub hierarchy: u32,
    pub controllers: Vec<String>,
    pub path: String,
}

/// Parses `/proc/PID/cgroup`; the error is the offending line.
pub fn parse_proc_cgroup(text: &str) -> Result<Vec<ProcCgroup>, String> {
    text.lines()
        .filter(|l| !l.is_empty())
        .map(|line| {
            let mut parts = line.splitn(3, ':');
            let (Some(id), Some(controllers), Some(path)) =
                (parts.next(), parts.next(), parts.next())
            else {
                return Err(line.to_string());
            };
            let hierarchy = id.parse().map_err(|_| line.to_string())?;
            if !path.starts_with('/') {
                return Err(line.to_string());
            }
            Ok(ProcCgroup {
                hierarchy,
                controllers: controllers
                    .split(',')
                    .filter(|c| !c.is_empty())
                    .map(String::from)
                    .collect(),
                path: path.to_string(),
            })
        })
        .collect()
}

fn read(path: &Path) -> Result<String, CgroupError> {
    crate::node::pseudo::read_to_string(path).map_err(|source| CgroupError::Read {
        path: path.into(),
        source,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    const HYBRID: &str = "\
31 23 0:28 / /sys/fs/cgroup rw,relatime - tmpfs tmpfs rw,mode=755
36 31 0:33 / /sys/fs/cgroup/devices rw,relatime - cgroup cgroup rw,devices
40 31 0:37 / /sys/fs/cgroup/systemd rw,relatime - cgroup cgroup rw,name=systemd
41 31 0:38 / /sys/fs/cgroup/unified rw,relatime - cgroup2 cgroup2 rw
";

    #[test]
    fn proc_cgroup_v1_and_v2_lines() {
        let e = parse_proc_cgroup("5:devices:/docker/abc\n4:cpu,cpuacct:/x\n0::/user.slice/a:b\n")
            .unwrap();
        assert_eq!(e[0].controllers, ["devices"]);
        assert_eq!(e[1].controllers, ["cpu", "cpuacct"]);
        assert_eq!(e[2].hierarchy, 0);
        assert!(e[2].controllers.is_empty());
        // Colons after the second one belong to the path.
        assert_eq!(e[2].path, "/user.slice/a:b");
        assert!(parse_proc_cgroup("garbage\n").is_err());
        assert!(parse_proc_cgroup("x::/\n").is_err());
        assert!(parse_proc_cgroup("0::relative\n").is_err());
    }

    #[test]
    fn detects_hybrid_legacy_and_unified() {
        let mounts = mountinfo::parse(HYBRID).unwrap();
        let layout = Layout::from_mounts(false, &mounts).unwrap();
        let Layout::Hybrid { devices, unified } = &layout else {
            panic!("{layout:?}")
        };
        assert_eq!(devices.mount_point, Path::new("/sys/fs/cgroup/devices"));
        assert_eq!(unified.mount_point, Path::new("/sys/fs/cgroup/unified"));

        let legacy: Vec<_> = mounts
            .iter()
            .filter(|m| m.fs_type != "cgroup2")
            .cloned()
            .collect();
        assert!(matches!(
            Layout::from_mounts(false, &legacy).unwrap(),
            Layout::Legacy { .. }
        ));

        // A private namespace with cgroup2 mounted over /sys/fs/cgroup: the top mount wins.
        let ns = format!("{HYBRID}99 23 0:38 / /sys/fs/cgroup rw - cgroup2 none rw\n");
        let mounts = mountinfo::parse(&ns).unwrap();
        let Layout::Unified { root } = Layout::from_mounts(true, &mounts).unwrap() else {
            panic!()
        };
        assert_eq!(root.mount_point, Path::new("/sys/fs/cgroup"));

        let none = mountinfo::parse("1 0 8:1 / / rw - ext4 /dev/vda rw\n").unwrap();
        assert!(matches!(
            Layout::from_mounts(false, &none),
            Err(CgroupError::NoDeviceControl)
        ));
    }

    #[test]
    fn engines_name_their_containers_in_cgroup_paths() {
        let id = "a".repeat(64);
        for (path, engine) in [
            (format!("/docker/{id}"), "docker"),
            (format!("/system.slice/docker-{id}.scope"), "docker"),
            (
                format!(
                    "/kubepods.slice/kubepods-besteffort.slice/kubepods-besteffort-pod1.slice/cri-containerd-{id}.scope"
                ),
                "containerd (CRI)",
            ),
            (format!("/kubepods/burstable/pod1/{id}"), "kubernetes"),
            (format!("/machine.slice/libpod-{id}.scope"), "podman"),
            (format!("/libpod_parent/libpod-{id}"), "podman"),
            (format!("/default/{id}"), "containerd"),
        ] {
            let c = container_of(&path).unwrap_or_else(|| panic!("{path}"));
            assert_eq!((c.engine, c.id.as_str()), (engine, id.as_str()), "{path}");
        }
        assert_eq!(container_of("/"), None);
        assert_eq!(container_of("/user.slice"), None);
    }

    #[test]
    fn cgroup_dirs_respect_mount_root() {
        let m = Mount {
            mount_point: "/sys/fs/cgroup".into(),
            root: "/".into(),
        };
        assert_eq!(
            m.dir_of(1, "/docker/abc").unwrap(),
            Path::new("/sys/fs/cgroup/docker/abc")
        );
        let nested = Mount {
            mount_point: "/sys/fs/cgroup".into(),
            root: "/kubepods".into(),
        };
        assert_eq!(
            nested.dir_of(1, "/kubepods/pod1/c").unwrap(),
            Path::new("/sys/fs/cgroup/pod1/c")
        );
        assert!(nested.dir_of(1, "/kubepodsX/c").is_err());
        assert!(nested.dir_of(1, "/other").is_err());
        assert!(m.dir_of(1, "/a/../../etc").is_err());
    }
}
