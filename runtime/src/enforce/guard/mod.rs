//! The cgroup v2 device guard: the compiled program from `ebpf/`, loaded once per program
//! version, pinned with its maps under `bpf_dir/<version>/`, and attached to NPU containers'
//! cgroups.
//!
//! Loading with aya costs tens of milliseconds (ELF, BTF, feature probes), so it happens once
//! per build; every later container start only opens the pins (four `bpf(BPF_OBJ_GET)` calls).
//! A new build pins beside the old one: containers already attached to the old program keep
//! it, and its maps, until they stop.
mod sys;

use std::{
    collections::BTreeMap,
    fs::File,
    os::fd::{AsFd, OwnedFd},
    path::{Path, PathBuf},
};

use aya::{
    maps::{Array, Map, MapData, MapError, PerCpuHashMap, PerCpuValues},
    programs::{CgroupDevice, ProgramError},
};
use npu_guard_common::{
    ClassValue, ContainerKey, ContainerStats, GrantKey, GrantValue, MAP_CLASSES, MAP_CONTAINERS,
    MAP_DENIALS, MAP_GRANTS, MAX_MAJORS, PROGRAM_NAME,
};

use crate::node::rules::{Access, DevType, DeviceClass, Grant};

/// The guard program, built from `ebpf/` by this crate's build script.
static OBJECT: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/npu-guard"));

/// `bpf_map_update_elem` flag: fail if the key exists.
const BPF_NOEXIST: u64 = 1;
/// Where bpffs lives by convention; mounted there when missing.
const BPFFS_ROOT: &str = "/sys/fs/bpf";

#[derive(Debug, thiserror::Error)]
pub enum GuardError {
    #[error("{path} is not on a bpffs, and only {BPFFS_ROOT} is mounted automatically")]
    NotBpffs { path: PathBuf },
    #[error("cannot prepare bpffs directory {path}: {source}")]
    Bpffs {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot load the device guard program: {0}")]
    Load(#[source] Box<aya::EbpfError>),
    #[error("cannot load the device guard program: {0}")]
    Program(#[from] ProgramError),
    #[error("the guard object has no {0}")]
    Missing(&'static str),
    #[error("cannot pin {path}: {source}")]
    Pin {
        path: PathBuf,
        source: aya::pin::PinError,
    },
    #[error("cannot open pinned {path}: {source}")]
    OpenPin { path: PathBuf, source: MapError },
    #[error("cannot open pinned program {path}: {source}")]
    OpenProgram {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot {op} in map {map}: {source}")]
    Map {
        op: &'static str,
        map: &'static str,
        source: MapError,
    },
    #[error("cannot open cgroup {path}: {source}")]
    Cgroup {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot attach the device guard to {path}: {source}")]
    Attach {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("refusing cgroup id {0}: not a container cgroup")]
    BadCgroup(u64),
    #[error("device major {0} is out of range")]
    BadMajor(u32),
}

/// Identifies the embedded program build: a hash of the object file (see build.rs).
pub fn version() -> String {
    env!("NPU_GUARD_VERSION").to_string()
}

/// Program versions pinned under `bpf_dir`.
pub fn versions(bpf_dir: &Path) -> std::io::Result<Vec<String>> {
    let mut out = Vec::new();
    match std::fs::read_dir(bpf_dir) {
        Ok(entries) => {
            for entry in entries {
                let entry = entry?;
                if entry.path().join(PROGRAM_NAME).exists() {
                    out.push(entry.file_name().to_string_lossy().into_owned());
                }
            }
        }
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {}
        Err(e) => return Err(e),
    }
    out.sort();
    Ok(out)
}

/// One registered container as the maps show it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ContainerPolicy {
    pub cgroup_id: u64,
    pub allowed: u64,
    pub denied: u64,
    pub grants: Vec<Grant>,
}

/// Handles on one pinned program version and its maps.
pub struct Guard {
    version: String,
    program: OwnedFd,
    program_id: u32,
    classes: Array<MapData, ClassValue>,
    containers: PerCpuHashMap<MapData, ContainerKey, ContainerStats>,
    grants: PerCpuHashMap<MapData, GrantKey, GrantValue>,
}

impl Guard {
    /// Opens the pinned program of this build under `bpf_dir`, loading and pinning it first if
    /// no earlier call did (mounting bpffs at /sys/fs/bpf if needed).
    pub fn ensure(bpf_dir: &Path) -> Result<Self, GuardError> {
        ensure_bpffs(bpf_dir)?;
        if let Some(guard) = Self::pinned(bpf_dir) {
            return Ok(guard);
        }
        let version = version();
        let dir = bpf_dir.join(&version);
        let lock_error = |source| GuardError::Bpffs {
            path: bpf_dir.into(),
            source,
        };
        let lock_dir = File::open(bpf_dir).map_err(lock_error)?;
        let _lock = nix::fcntl::Flock::lock(lock_dir, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, errno)| lock_error(errno.into()))?;
        if !dir.join(PROGRAM_NAME).exists() {
            load_and_pin(&dir)?;
        }
        Self::open_dir(dir, version)
    }

    /// This build's program if it is pinned already under `bpf_dir` (nothing is loaded or
    /// mounted); `None` also when opening fails, for [`Guard::ensure`] to report.
    pub fn pinned(bpf_dir: &Path) -> Option<Self> {
        let version = version();
        let dir = bpf_dir.join(&version);
        // The program is pinned last, so its pin means the maps are there too.
        if !dir.join(PROGRAM_NAME).exists() {
            return None;
        }
        Self::open_dir(dir, version).ok()
    }

    /// Opens an already pinned program version (e.g. an older build's, to unregister from it).
    pub fn open(bpf_dir: &Path, version: &str) -> Result<Self, GuardError> {
        Self::open_dir(bpf_dir.join(version), version.to_string())
    }

    fn open_dir(dir: PathBuf, version: String) -> Result<Self, GuardError> {
        let path = dir.join(PROGRAM_NAME);
        let open_error = |source| GuardError::OpenProgram {
            path: path.clone(),
            source,
        };
        let program = sys::obj_get(&path).map_err(open_error)?;
        let program_id = sys::prog_id(program.as_fd()).map_err(open_error)?;
        Ok(Self {
            program_id,
            classes: open_map(&dir, MAP_CLASSES)?,
            containers: open_map(&dir, MAP_CONTAINERS)?,
            grants: open_map(&dir, MAP_GRANTS)?,
            program,
            version,
        })
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    /// Marks device classes as guarded (idempotent; classes are never unguarded).
    pub fn guard_classes(
        &mut self,
        classes: impl IntoIterator<Item = (DeviceClass, u32)>,
    ) -> Result<(), GuardError> {
        for (class, nodes) in classes {
            if class.major as usize >= MAX_MAJORS {
                return Err(GuardError::BadMajor(class.major));
            }
            let mut value = self
                .classes
                .get(&class.major, 0)
                .map_err(map_error("read", MAP_CLASSES))?;
            let bit = 1 << class.dev_type.bpf();
            if value.dev_types & bit != 0 && value.nodes == nodes {
                continue;
            }
            value.dev_types |= bit;
            value.nodes = nodes;
            self.classes
                .set(class.major, value, 0)
                .map_err(map_error("update", MAP_CLASSES))?;
        }
        Ok(())
    }

    /// Registers the container whose cgroup has id `cgroup_id` with exactly `grants`.
    /// On failure nothing of it is left in the maps. Registering again keeps the counters.
    pub fn register(&mut self, cgroup_id: u64, grants: &[Grant]) -> Result<(), GuardError> {
        // Ids 0 and 1 are "none" and the root cgroup: registering them would open NPUs to
        // the whole host.
        if cgroup_id <= 1 {
            return Err(GuardError::BadCgroup(cgroup_id));
        }
        let result = self.insert_registration(cgroup_id, grants);
        if result.is_err() {
            // Best effort: the error that matters is the one already in hand.
            let _ = self.unregister(cgroup_id, grants);
        }
        result
    }

    fn insert_registration(&mut self, cgroup_id: u64, grants: &[Grant]) -> Result<(), GuardError> {
        let cpus = aya::util::nr_cpus().map_err(|(_, e)| GuardError::Map {
            op: "size",
            map: MAP_CONTAINERS,
            source: MapError::IoError(e),
        })?;
        let per_cpu = |map: &'static str| {
            move |e: std::io::Error| GuardError::Map {
                op: "size",
                map,
                source: MapError::IoError(e),
            }
        };
        // The container entry first: the program's fast path trusts that a grant's cgroup is
        // registered.
        let zeros = PerCpuValues::try_from(vec![ContainerStats::default(); cpus])
            .map_err(per_cpu(MAP_CONTAINERS))?;
        ignore_existing(
            self.containers
                .insert(ContainerKey { cgroup_id }, zeros, BPF_NOEXIST),
        )
        .map_err(map_error("insert", MAP_CONTAINERS))?;
        for g in grants {
            let value = GrantValue {
                access: g.access.bits(),
                pad: 0,
                allowed: 0,
            };
            let values = PerCpuValues::try_from(vec![value; cpus]).map_err(per_cpu(MAP_GRANTS))?;
            ignore_existing(
                self.grants
                    .insert(grant_key(cgroup_id, g), values, BPF_NOEXIST),
            )
            .map_err(map_error("insert", MAP_GRANTS))?;
        }
        Ok(())
    }

    /// Removes the container's grants, then the container. Grants go first because the
    /// program allows on a grant of the task's own cgroup without looking further; from the
    /// moment a grant is gone, its accesses are denied. Missing entries are fine.
    pub fn unregister(&mut self, cgroup_id: u64, grants: &[Grant]) -> Result<(), GuardError> {
        for g in grants {
            ignore_missing(self.grants.remove(&grant_key(cgroup_id, g)))
                .map_err(map_error("remove", MAP_GRANTS))?;
        }
        ignore_missing(self.containers.remove(&ContainerKey { cgroup_id }))
            .map_err(map_error("remove", MAP_CONTAINERS))?;
        Ok(())
    }

    /// Takes one grant away from a registered container: its next open or mknod of the node
    /// is denied (descriptors already open stay open: no device cgroup can revoke those).
    pub fn revoke(&mut self, cgroup_id: u64, grant: &Grant) -> Result<(), GuardError> {
        ignore_missing(self.grants.remove(&grant_key(cgroup_id, grant)))
            .map_err(map_error("remove", MAP_GRANTS))
    }

    /// Every cgroup id with an entry in this version's maps (registered or leftover grants).
    pub fn cgroup_ids(&self) -> Result<std::collections::BTreeSet<u64>, GuardError> {
        let mut ids = std::collections::BTreeSet::new();
        for key in self.containers.keys() {
            ids.insert(key.map_err(map_error("read", MAP_CONTAINERS))?.cgroup_id);
        }
        for key in self.grants.keys() {
            ids.insert(key.map_err(map_error("read", MAP_GRANTS))?.cgroup_id);
        }
        Ok(ids)
    }

    /// Removes every entry of `cgroup_id` without knowing its grants (for `gc`).
    pub fn purge(&mut self, cgroup_id: u64) -> Result<(), GuardError> {
        let keys: Vec<GrantKey> = self
            .grants
            .keys()
            .filter_map(Result::ok)
            .filter(|k| k.cgroup_id == cgroup_id)
            .collect();
        for key in keys {
            ignore_missing(self.grants.remove(&key)).map_err(map_error("remove", MAP_GRANTS))?;
        }
        ignore_missing(self.containers.remove(&ContainerKey { cgroup_id }))
            .map_err(map_error("remove", MAP_CONTAINERS))
    }

    /// Attaches the program to the cgroup directory `cgroup` unless it already is.
    /// Returns whether it attached now.
    pub fn attach(&self, cgroup: &Path) -> Result<bool, GuardError> {
        let dir = File::open(cgroup).map_err(|source| GuardError::Cgroup {
            path: cgroup.into(),
            source,
        })?;
        if self.attached_to_fd(&dir, cgroup)? {
            return Ok(false);
        }
        sys::attach_device_program(dir.as_fd(), self.program.as_fd()).map_err(|source| {
            GuardError::Attach {
                path: cgroup.into(),
                source,
            }
        })?;
        Ok(true)
    }

    fn attached_to_fd(&self, dir: &File, path: &Path) -> Result<bool, GuardError> {
        let id = self.program_id;
        let ids =
            sys::attached_device_programs(dir.as_fd()).map_err(|source| GuardError::Attach {
                path: path.into(),
                source,
            })?;
        Ok(ids.contains(&id))
    }

    /// Every registered container with its counters and grants, by cgroup id.
    pub fn policy(&self) -> Result<Vec<ContainerPolicy>, GuardError> {
        let mut by_id: BTreeMap<u64, ContainerPolicy> = BTreeMap::new();
        for entry in self.containers.iter() {
            let (key, per_cpu) = entry.map_err(map_error("read", MAP_CONTAINERS))?;
            by_id.insert(
                key.cgroup_id,
                ContainerPolicy {
                    cgroup_id: key.cgroup_id,
                    allowed: 0,
                    denied: per_cpu.iter().map(|s| s.denied).sum(),
                    grants: Vec::new(),
                },
            );
        }
        for entry in self.grants.iter() {
            let (key, per_cpu) = entry.map_err(map_error("read", MAP_GRANTS))?;
            // Grants without a container entry are leftovers of an interrupted cleanup of a
            // cgroup that is gone (ids are never reused); `gc` removes them.
            if let (Some(policy), Some(dev_type), Some(first)) = (
                by_id.get_mut(&key.cgroup_id),
                DevType::from_bpf(key.dev_type),
                per_cpu.iter().next(),
            ) {
                policy.allowed += per_cpu.iter().map(|v| v.allowed).sum::<u64>();
                policy.grants.push(Grant {
                    dev_type,
                    major: key.major,
                    minor: key.minor,
                    access: Access::from_bits(first.access),
                });
            }
        }
        let mut out: Vec<_> = by_id.into_values().collect();
        for p in &mut out {
            p.grants.sort();
        }
        Ok(out)
    }
}

fn grant_key(cgroup_id: u64, g: &Grant) -> GrantKey {
    GrantKey {
        cgroup_id,
        dev_type: g.dev_type.bpf(),
        major: g.major,
        minor: g.minor,
        pad: 0,
    }
}

fn map_error(op: &'static str, map: &'static str) -> impl Fn(MapError) -> GuardError {
    move |source| GuardError::Map { op, map, source }
}

fn ignore_existing(result: Result<(), MapError>) -> Result<(), MapError> {
    match result {
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::EEXIST) => Ok(()),
        other => other,
    }
}

fn ignore_missing(result: Result<(), MapError>) -> Result<(), MapError> {
    match result {
        Err(MapError::KeyNotFound) => Ok(()),
        Err(MapError::SyscallError(e)) if e.io_error.raw_os_error() == Some(libc::ENOENT) => Ok(()),
        other => other,
    }
}

/// The denial ring buffer pinned for program `version`.
pub fn open_denials(
    bpf_dir: &Path,
    version: &str,
) -> Result<aya::maps::RingBuf<MapData>, GuardError> {
    open_map(&bpf_dir.join(version), MAP_DENIALS)
}

fn open_map<T>(dir: &Path, name: &'static str) -> Result<T, GuardError>
where
    T: TryFrom<Map, Error = MapError>,
{
    let path = dir.join(name);
    let open_error = |source| GuardError::OpenPin {
        path: path.clone(),
        source,
    };
    let data = MapData::from_pin(&path).map_err(open_error)?;
    Map::from_map_data(data)
        .and_then(T::try_from)
        .map_err(open_error)
}

/// Loads the embedded object and pins maps, then the program, into `dir`.
/// Called with the bpf_dir lock held.
fn load_and_pin(dir: &Path) -> Result<(), GuardError> {
    let bpffs_error = |source| GuardError::Bpffs {
        path: dir.into(),
        source,
    };
    std::fs::create_dir_all(dir).map_err(bpffs_error)?;
    // Leftover map pins of a load that died before pinning the program: unused, replace them.
    for name in [MAP_CLASSES, MAP_CONTAINERS, MAP_GRANTS, MAP_DENIALS] {
        match std::fs::remove_file(dir.join(name)) {
            Err(e) if e.kind() != std::io::ErrorKind::NotFound => return Err(bpffs_error(e)),
            _ => {}
        }
    }
    let mut ebpf = aya::EbpfLoader::new()
        .load(OBJECT)
        .map_err(|e| GuardError::Load(Box::new(e)))?;
    for name in [MAP_CLASSES, MAP_CONTAINERS, MAP_GRANTS, MAP_DENIALS] {
        let path = dir.join(name);
        ebpf.map(name)
            .ok_or(GuardError::Missing(name))?
            .pin(&path)
            .map_err(|source| GuardError::Pin { path, source })?;
    }
    let program: &mut CgroupDevice = ebpf
        .program_mut(PROGRAM_NAME)
        .ok_or(GuardError::Missing(PROGRAM_NAME))?
        .try_into()?;
    program.load()?;
    let path = dir.join(PROGRAM_NAME);
    program
        .pin(&path)
        .map_err(|source| GuardError::Pin { path, source })?;
    Ok(())
}

fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC)
}

/// Makes sure `bpf_dir` exists on a bpffs, mounting bpffs at /sys/fs/bpf when that is where
/// it belongs and nothing is mounted there yet.
pub fn ensure_bpffs(bpf_dir: &Path) -> Result<(), GuardError> {
    let mut existing = bpf_dir;
    while !existing.exists() {
        existing = existing.parent().unwrap_or(Path::new("/"));
    }
    if !is_bpffs(existing) {
        let root = Path::new(BPFFS_ROOT);
        if !(bpf_dir.starts_with(root) && existing.starts_with(root) && root.is_dir()) {
            return Err(GuardError::NotBpffs {
                path: bpf_dir.into(),
            });
        }
        nix::mount::mount(
            Some("bpf"),
            root,
            Some("bpf"),
            nix::mount::MsFlags::MS_NOSUID
                | nix::mount::MsFlags::MS_NODEV
                | nix::mount::MsFlags::MS_NOEXEC,
            Some("mode=0700"),
        )
        .map_err(|errno| GuardError::Bpffs {
            path: root.into(),
            source: errno.into(),
        })?;
    }
    std::fs::create_dir_all(bpf_dir).map_err(|source| GuardError::Bpffs {
        path: bpf_dir.into(),
        source,
    })
}
