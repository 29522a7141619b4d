//! The cgroup v2 device guard: the compiled program from `ebpf/`, loaded once per program
//! version and pinned, attached to NPU containers' cgroups, with maps that outlive versions.
//!
//! Pins under `bpf_dir`:
//! - `maps/v<MAP_LAYOUT>/npu_{classes,containers,grants,denials}`: the guarded classes, the
//!   registered containers and their grants, the denial ring buffer. Every program version
//!   uses these same maps, so a new build's program, once attached, gives running containers
//!   exactly the verdicts they had (an upgrade needs no migration until the layout changes).
//! - `<version>/npu_dev_guard` (or `npu_dev_guard_basic`): the program, one directory per
//!   build. The file name says which [`Variant`] this kernel runs.
//!
//! Loading with aya costs tens of milliseconds (ELF, BTF, feature probes), so it happens once
//! per build and boot; every later container start only opens the pins (`bpf(BPF_OBJ_GET)`).
//! The full variant is tried first; if the verifier refuses it for helpers this kernel does
//! not give cgroup device programs, the basic one. If neither loads, that verdict is kept
//! (per build and boot, in `state_dir/node/`) so later containers do not pay for the attempt,
//! and nothing is left pinned.
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
    MAP_DENIALS, MAP_GRANTS, MAP_LAYOUT, MAX_MAJORS, PROGRAM_NAME,
};
use serde::{Deserialize, Serialize};

use crate::node::{
    config::Config,
    rules::{Access, DevType, DeviceClass, Grant},
    state,
};

/// The guard program variants, built from `ebpf/` by this crate's build script.
static OBJECT_FULL: &[u8] = aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/npu-guard"));
static OBJECT_BASIC: &[u8] =
    aya::include_bytes_aligned!(concat!(env!("OUT_DIR"), "/npu-guard-basic"));

/// Every map the program uses, all pinned in the maps directory.
const MAPS: [&str; 4] = [MAP_CLASSES, MAP_CONTAINERS, MAP_GRANTS, MAP_DENIALS];

/// `bpf_map_update_elem` flag: fail if the key exists.
const BPF_NOEXIST: u64 = 1;
/// Where bpffs lives by convention; mounted there when missing.
const BPFFS_ROOT: &str = "/sys/fs/bpf";
/// The node fact (`state_dir/node/`) remembering that no variant loads on this kernel.
const UNSUPPORTED_FACT: &str = "guard-unsupported";

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
    #[error(
        "this kernel cannot run the device guard: {reason} (remembered for this build until \
         reboot; see npu-ctk doctor)"
    )]
    Unsupported { reason: String },
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
    #[error("cannot detach program {id} from {path}: {source}")]
    Detach {
        path: PathBuf,
        id: u32,
        source: std::io::Error,
    },
    #[error("refusing cgroup id {0}: not a container cgroup")]
    BadCgroup(u64),
    #[error("device major {0} is out of range")]
    BadMajor(u32),
    #[error(transparent)]
    State(#[from] state::StateError),
    #[error("bpf_dir: {0}")]
    Untrusted(#[from] crate::node::trust::TrustError),
}

/// Which program this kernel runs: what a cgroup device program may ask differs by kernel.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum Variant {
    /// Owners among the task's ancestors, pid and command in denial events.
    Full,
    /// The task's own cgroup only, no pid or command (e.g. 5.10).
    Basic,
}

impl Variant {
    /// In the order they are tried.
    pub const ALL: [Self; 2] = [Self::Full, Self::Basic];

    fn object(self) -> &'static [u8] {
        match self {
            Self::Full => OBJECT_FULL,
            Self::Basic => OBJECT_BASIC,
        }
    }

    /// The program's pin file name in its version directory.
    pub fn pin_name(self) -> &'static str {
        match self {
            Self::Full => PROGRAM_NAME,
            Self::Basic => "npu_dev_guard_basic",
        }
    }

    /// What this variant does not give, for `doctor` and `policy show` (none for full).
    pub fn limits(self) -> &'static [&'static str] {
        match self {
            Self::Full => &[],
            Self::Basic => &[
                "sub-cgroups of a container are denied its NPUs (no \
                 bpf_get_current_ancestor_cgroup_id for cgroup device programs)",
                "denial events carry no pid or command (no bpf_get_current_pid_tgid / \
                 bpf_get_current_comm)",
            ],
        }
    }
}

/// Identifies the embedded program build: a hash of both objects (see build.rs).
pub fn version() -> String {
    env!("NPU_GUARD_VERSION").to_string()
}

/// The directory of the maps shared by every program version.
pub fn maps_dir(bpf_dir: &Path) -> PathBuf {
    bpf_dir.join("maps").join(format!("v{MAP_LAYOUT}"))
}

/// The pin of shared map `name` (e.g. [`MAP_GRANTS`]).
pub fn map_pin(bpf_dir: &Path, name: &str) -> PathBuf {
    maps_dir(bpf_dir).join(name)
}

/// The variant pinned for `version`, if its program is pinned.
pub fn pinned_variant(bpf_dir: &Path, version: &str) -> Option<Variant> {
    let dir = bpf_dir.join(version);
    Variant::ALL
        .into_iter()
        .find(|v| dir.join(v.pin_name()).exists())
}

/// Program versions pinned under `bpf_dir`.
pub fn versions(bpf_dir: &Path) -> std::io::Result<Vec<String>> {
    let mut out = Vec::new();
    match std::fs::read_dir(bpf_dir) {
        Ok(entries) => {
            for entry in entries {
                let name = entry?.file_name().to_string_lossy().into_owned();
                if pinned_variant(bpf_dir, &name).is_some() {
                    out.push(name);
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

/// The shared maps: guarded classes, registered containers and their grants.
pub struct Maps {
    classes: Array<MapData, ClassValue>,
    containers: PerCpuHashMap<MapData, ContainerKey, ContainerStats>,
    grants: PerCpuHashMap<MapData, GrantKey, GrantValue>,
}

/// Handles on one pinned program version and the shared maps.
pub struct Guard {
    version: String,
    variant: Variant,
    program: OwnedFd,
    program_id: u32,
    pub maps: Maps,
}

/// The verdict kept when no variant loads (per build and boot).
#[derive(Debug, Serialize, Deserialize)]
struct UnsupportedFact {
    version: String,
    boot_id: String,
    reason: String,
}

impl Guard {
    /// Opens the pinned program of this build under `config.bpf_dir`, loading and pinning it
    /// first if no earlier call did (mounting bpffs at /sys/fs/bpf if needed).
    pub fn ensure(config: &Config) -> Result<Self, GuardError> {
        let bpf_dir = &config.bpf_dir;
        ensure_bpffs(bpf_dir)?;
        if let Some(guard) = Self::pinned(bpf_dir) {
            return Ok(guard);
        }
        let version = version();
        if let Some(reason) = remembered_unsupported(config, &version) {
            tracing::info!(%reason, "guard not loaded: no variant loads on this kernel (remembered)");
            return Err(GuardError::Unsupported { reason });
        }
        let dir = bpf_dir.join(&version);
        let lock_error = |source| GuardError::Bpffs {
            path: bpf_dir.into(),
            source,
        };
        let lock_dir = File::open(bpf_dir).map_err(lock_error)?;
        let _lock = nix::fcntl::Flock::lock(lock_dir, nix::fcntl::FlockArg::LockExclusive)
            .map_err(|(_, errno)| lock_error(errno.into()))?;
        if pinned_variant(bpf_dir, &version).is_none() {
            match load_and_pin(bpf_dir, &dir) {
                Err(GuardError::Unsupported { reason }) => {
                    let fact = UnsupportedFact {
                        version,
                        boot_id: state::boot_id(),
                        reason: reason.clone(),
                    };
                    state::write_node(&config.state_dir, UNSUPPORTED_FACT, &fact)?;
                    return Err(GuardError::Unsupported { reason });
                }
                other => other?,
            };
        }
        Self::open_dir(bpf_dir, dir, version)
    }

    /// This build's program if it is pinned already under `bpf_dir` (nothing is loaded or
    /// mounted); `None` also when opening fails, for [`Guard::ensure`] to report.
    pub fn pinned(bpf_dir: &Path) -> Option<Self> {
        let version = version();
        pinned_variant(bpf_dir, &version)?;
        Self::open_dir(bpf_dir, bpf_dir.join(&version), version).ok()
    }

    /// Opens an already pinned program version (e.g. an older build's, to re-attach it).
    pub fn open(bpf_dir: &Path, version: &str) -> Result<Self, GuardError> {
        Self::open_dir(bpf_dir, bpf_dir.join(version), version.to_string())
    }

    fn open_dir(bpf_dir: &Path, dir: PathBuf, version: String) -> Result<Self, GuardError> {
        let variant = Variant::ALL
            .into_iter()
            .find(|v| dir.join(v.pin_name()).exists())
            .unwrap_or(Variant::Full);
        let path = dir.join(variant.pin_name());
        let open_error = |source| GuardError::OpenProgram {
            path: path.clone(),
            source,
        };
        let program = sys::obj_get(&path).map_err(open_error)?;
        let program_id = sys::prog_id(program.as_fd()).map_err(open_error)?;
        Ok(Self {
            program_id,
            maps: Maps::open(bpf_dir)?,
            program,
            variant,
            version,
        })
    }

    pub fn version(&self) -> &str {
        &self.version
    }

    pub fn variant(&self) -> Variant {
        self.variant
    }

    /// The kernel's id of the program (as `bpftool prog` shows it).
    pub fn program_id(&self) -> u32 {
        self.program_id
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
}

/// Kernel ids of the device programs attached directly to the cgroup directory `cgroup`.
pub fn attached(cgroup: &Path) -> Result<Vec<u32>, GuardError> {
    let dir = File::open(cgroup).map_err(|source| GuardError::Cgroup {
        path: cgroup.into(),
        source,
    })?;
    sys::attached_device_programs(dir.as_fd()).map_err(|source| GuardError::Attach {
        path: cgroup.into(),
        source,
    })
}

/// Detaches the device program with kernel id `id` from the cgroup directory `cgroup`.
pub fn detach(cgroup: &Path, id: u32) -> Result<(), GuardError> {
    let detach_error = |source| GuardError::Detach {
        path: cgroup.into(),
        id,
        source,
    };
    let dir = File::open(cgroup).map_err(|source| GuardError::Cgroup {
        path: cgroup.into(),
        source,
    })?;
    let program = sys::prog_by_id(id).map_err(detach_error)?;
    sys::detach_device_program(dir.as_fd(), program.as_fd()).map_err(detach_error)
}

/// Kernel ids of every pinned program version, with their versions.
pub fn pinned_programs(bpf_dir: &Path) -> BTreeMap<u32, String> {
    versions(bpf_dir)
        .unwrap_or_default()
        .into_iter()
        .filter_map(|v| {
            let variant = pinned_variant(bpf_dir, &v)?;
            let program = sys::obj_get(&bpf_dir.join(&v).join(variant.pin_name())).ok()?;
            Some((sys::prog_id(program.as_fd()).ok()?, v))
        })
        .collect()
}

/// Which variant this kernel would run, found by loading them (nothing is pinned or kept):
/// `npu-ctk doctor`'s dry run.
pub fn probe_load() -> Result<Variant, GuardError> {
    let mut refused = Vec::new();
    for variant in Variant::ALL {
        match load(variant, None) {
            Ok(_) => return Ok(variant),
            Err(LoadFailure::Refused(reason)) => refused.push(reason),
            Err(LoadFailure::Other(e)) => return Err(e),
        }
    }
    Err(GuardError::Unsupported {
        reason: refused.join("; "),
    })
}

/// Why a variant did not load: refused by this kernel (try the next one), or another error.
enum LoadFailure {
    Refused(String),
    Other(GuardError),
}

/// Loads `variant`, its maps reused from (or created and pinned at) `maps_dir`; with `None`,
/// private maps (a dry run).
fn load(variant: Variant, maps_dir: Option<&Path>) -> Result<aya::Ebpf, LoadFailure> {
    let mut loader = aya::EbpfLoader::new();
    if let Some(dir) = maps_dir {
        for name in MAPS {
            loader.map_pin_path(name, dir.join(name));
        }
    }
    let mut ebpf = match loader.load(variant.object()) {
        Ok(ebpf) => ebpf,
        // A map type this kernel does not have (ring buffers before 5.8): no variant does
        // without it.
        Err(aya::EbpfError::MapError(MapError::CreateError { name, io_error }))
            if io_error.raw_os_error() == Some(libc::EINVAL) =>
        {
            return Err(LoadFailure::Refused(format!(
                "the {variant:?} program: the kernel refuses to create map {name} ({io_error})"
            )));
        }
        Err(e) => return Err(LoadFailure::Other(GuardError::Load(Box::new(e)))),
    };
    let program: &mut CgroupDevice = ebpf
        .program_mut(PROGRAM_NAME)
        .ok_or(LoadFailure::Other(GuardError::Missing(PROGRAM_NAME)))?
        .try_into()
        .map_err(|e: ProgramError| LoadFailure::Other(e.into()))?;
    match program.load() {
        Ok(()) => Ok(ebpf),
        Err(ProgramError::LoadError {
            io_error,
            verifier_log,
        }) => {
            let log = verifier_log.to_string();
            // The verifier names a helper the program type may not call: "unknown func
            // bpf_get_current_comm#16".
            match log.lines().find(|l| l.contains("unknown func")) {
                Some(line) => Err(LoadFailure::Refused(format!(
                    "the {variant:?} program: the verifier refuses {}",
                    line.trim()
                        .trim_start_matches(|c: char| c.is_ascii_digit() || c == ':')
                ))),
                None => Err(LoadFailure::Other(GuardError::Program(
                    ProgramError::LoadError {
                        io_error,
                        verifier_log,
                    },
                ))),
            }
        }
        Err(e) => Err(LoadFailure::Other(e.into())),
    }
}

/// The remembered "no variant loads" verdict for `version` in this boot, if any.
fn remembered_unsupported(config: &Config, version: &str) -> Option<String> {
    let fact: UnsupportedFact = state::read_node(&config.state_dir, UNSUPPORTED_FACT).ok()??;
    (fact.version == version && fact.boot_id == state::boot_id()).then_some(fact.reason)
}

/// Loads the first variant this kernel accepts and pins its program into `dir`, with the
/// shared maps. Called with the bpf_dir lock held. On failure nothing new stays pinned.
fn load_and_pin(bpf_dir: &Path, dir: &Path) -> Result<Variant, GuardError> {
    let maps = maps_dir(bpf_dir);
    let bpffs_error = |path: &Path| {
        let path = path.to_path_buf();
        move |source| GuardError::Bpffs { path, source }
    };
    let new_maps = !maps.exists();
    if !new_maps {
        // Pins made by an earlier load: their key and value sizes must be this build's.
        Maps::open(bpf_dir)?;
    }
    std::fs::create_dir_all(&maps).map_err(bpffs_error(&maps))?;
    let drop_new_maps = || {
        if new_maps {
            let _ = std::fs::remove_dir_all(&maps);
        }
    };
    let mut refused = Vec::new();
    for variant in Variant::ALL {
        let mut ebpf = match load(variant, Some(&maps)) {
            Ok(ebpf) => ebpf,
            Err(LoadFailure::Refused(reason)) => {
                refused.push(reason);
                continue;
            }
            Err(LoadFailure::Other(e)) => {
                drop_new_maps();
                return Err(e);
            }
        };
        std::fs::create_dir_all(dir).map_err(bpffs_error(dir))?;
        let path = dir.join(variant.pin_name());
        let program: &mut CgroupDevice = ebpf
            .program_mut(PROGRAM_NAME)
            .ok_or(GuardError::Missing(PROGRAM_NAME))?
            .try_into()?;
        if let Err(source) = program.pin(&path) {
            let _ = std::fs::remove_dir(dir);
            drop_new_maps();
            return Err(GuardError::Pin { path, source });
        }
        return Ok(variant);
    }
    drop_new_maps();
    Err(GuardError::Unsupported {
        reason: refused.join("; "),
    })
}

impl Maps {
    /// Opens the shared maps pinned under `bpf_dir`, checking that their key and value sizes
    /// are this build's.
    pub fn open(bpf_dir: &Path) -> Result<Self, GuardError> {
        Ok(Self {
            classes: open_map(bpf_dir, MAP_CLASSES)?,
            containers: open_map(bpf_dir, MAP_CONTAINERS)?,
            grants: open_map(bpf_dir, MAP_GRANTS)?,
        })
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

/// The shared denial ring buffer.
pub fn open_denials(bpf_dir: &Path) -> Result<aya::maps::RingBuf<MapData>, GuardError> {
    open_map(bpf_dir, MAP_DENIALS)
}

fn open_map<T>(bpf_dir: &Path, name: &'static str) -> Result<T, GuardError>
where
    T: TryFrom<Map, Error = MapError>,
{
    let path = map_pin(bpf_dir, name);
    let open_error = |source| GuardError::OpenPin {
        path: path.clone(),
        source,
    };
    let data = MapData::from_pin(&path).map_err(open_error)?;
    // The typed conversion checks the map's type and key and value sizes.
    Map::from_map_data(data)
        .and_then(T::try_from)
        .map_err(open_error)
}

fn is_bpffs(path: &Path) -> bool {
    nix::sys::statfs::statfs(path)
        .is_ok_and(|s| s.filesystem_type() == nix::sys::statfs::BPF_FS_MAGIC)
}

/// Makes sure `bpf_dir` exists on a bpffs, mounting bpffs at /sys/fs/bpf when that is where
/// it belongs and nothing is mounted there yet.
pub fn ensure_bpffs(bpf_dir: &Path) -> Result<(), GuardError> {
    mount_bpffs(bpf_dir)?;
    // Someone else could have made it first, to read or plant pins: refuse such a one.
    Ok(crate::node::trust::private_dir(bpf_dir)?)
}

/// Mounts bpffs at `/sys/fs/bpf` when `bpf_dir` is below it and no bpffs holds it yet; a
/// `bpf_dir` elsewhere must already be on a bpffs. Whatever mode the bpffs root has (the
/// kernel's default is 1777, which a plain `mount -t bpf` or an fstab line leaves), only
/// `bpf_dir` itself must be private.
pub fn mount_bpffs(bpf_dir: &Path) -> Result<(), GuardError> {
    let mut existing = bpf_dir;
    while !existing.exists() {
        existing = existing.parent().unwrap_or(Path::new("/"));
    }
    if is_bpffs(existing) {
        return Ok(());
    }
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
    })
}
