//! Driver mounts: mount lists, the policy for their sources, and binding them into a
//! container's root filesystem without ever leaving it.
//!
//! Every source is checked on what is actually mounted (an open handle, so swapping the path
//! afterwards changes nothing), and every target is resolved within the rootfs (pathrs:
//! openat2 `RESOLVE_IN_ROOT`, or its userspace resolver where openat2 is missing), so a symlink
//! in the image can never redirect a mount or a created file onto the host. How the read-only
//! bind is made depends on the mount syscalls this kernel has ([`MountApi`], probed per run):
//! - 5.12+: a detached bind (`open_tree`) made read-only/nosuid/nodev with `mount_setattr` in
//!   the host's mount namespace, then attached on the resolved handle with `move_mount`;
//! - 5.2 - 5.11: the same detached bind attached first, then made read-only by a bind remount
//!   through its fd (a detached tree cannot be remounted there);
//! - before 5.2: inside the container's mount namespace, the source is opened `O_PATH` and
//!   checked, bind-mounted through `/proc/self/fd` onto the resolved target, and remounted.
//!
//! In the last two the mount is writable for a moment, before the container's first process
//! runs; a failed remount detaches it again and fails the container.
use std::{
    ffi::CString,
    fs::File,
    os::fd::{AsFd, AsRawFd, OwnedFd},
    os::unix::fs::{MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
};

use serde::Serialize;

use pathrs::{InodeType, Root};
use rustix::{
    fs::{Mode, OFlags},
    mount::{MountFlags, MoveMountFlags, OpenTreeFlags, UnmountFlags},
};

use crate::node::{
    devices::ContainerDevice,
    rules::DevType,
    trust::{self, TrustError},
};

#[derive(Debug, thiserror::Error)]
pub enum MountError {
    #[error("mount list: {0}")]
    Untrusted(TrustError),
    #[error("mount list {name:?} does not exist ({path} not found)")]
    UnknownList { name: String, path: PathBuf },
    #[error("cannot read {path}: {source}")]
    Read {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("{file}:{line}: {reason}")]
    BadLine {
        file: PathBuf,
        line: usize,
        reason: String,
    },
    #[error("refusing mount source {path}: {reason}")]
    Refused { path: PathBuf, reason: String },
    #[error("cannot {op} {path}: {source}")]
    Io {
        op: &'static str,
        path: PathBuf,
        source: std::io::Error,
    },
    #[error("cannot {op} {path} inside the container rootfs: {source}")]
    InRoot {
        op: &'static str,
        path: PathBuf,
        source: pathrs::error::Error,
    },
    #[error("{path} in the container rootfs is a {found}, but the source is a {expected}")]
    TargetType {
        path: PathBuf,
        found: &'static str,
        expected: &'static str,
    },
}

fn io<'a>(op: &'static str, path: &'a Path) -> impl FnOnce(std::io::Error) -> MountError + 'a {
    move |source| MountError::Io {
        op,
        path: path.into(),
        source,
    }
}

/// Parses a mount list: one absolute path per line, `#` comments and blank lines skipped.
pub fn parse_list(text: &str, file: &Path) -> Result<Vec<PathBuf>, MountError> {
    let mut out = Vec::new();
    for (n, raw) in text.lines().enumerate() {
        let line = raw.trim();
        if line.is_empty() || line.starts_with('#') {
            continue;
        }
        let bad = |reason: &str| MountError::BadLine {
            file: file.into(),
            line: n + 1,
            reason: format!("{reason}: {line:?}"),
        };
        let path = Path::new(line);
        if !path.is_absolute() {
            return Err(bad("not an absolute path"));
        }
        // Path::components hides "." components, so look at the text.
        if line.split('/').any(|c| c == "." || c == "..") {
            return Err(bad("'.' and '..' are not allowed"));
        }
        if path == Path::new("/") {
            return Err(bad("the root directory cannot be mounted"));
        }
        if !out.iter().any(|p: &PathBuf| p == path) {
            out.push(path.to_path_buf());
        }
    }
    Ok(out)
}

/// Reads `<dir>/<name>.list` for each name, in order. A missing list is an error, except
/// the default `base` list when the container did not name lists itself.
pub fn read_lists(
    dir: &Path,
    names: &[String],
    explicit: bool,
) -> Result<Vec<PathBuf>, MountError> {
    let mut out: Vec<PathBuf> = Vec::new();
    for name in names {
        let path = dir.join(format!("{name}.list"));
        // A list decides what is mounted into containers: only root may have written it.
        let trusted = trust::trusted_file(&path);
        let text = match trusted.and_then(|()| {
            std::fs::read_to_string(&path).map_err(|source| TrustError::Inspect {
                path: path.clone(),
                source,
            })
        }) {
            Ok(text) => text,
            Err(e) if trust::is_missing(&e) => {
                // A profile's default lists (Ascend's `base`) may be absent: no driver mounts.
                if !explicit {
                    tracing::info!(list = %path.display(), "no default mount list; no driver mounts");
                    continue;
                }
                return Err(MountError::UnknownList {
                    name: name.clone(),
                    path,
                });
            }
            Err(TrustError::Inspect { source, .. }) => {
                return Err(MountError::Read { path, source });
            }
            Err(e) => return Err(MountError::Untrusted(e)),
        };
        for p in parse_list(&text, &path)? {
            if !out.contains(&p) {
                out.push(p);
            }
        }
    }
    Ok(out)
}

/// How this kernel lets the hook make a read-only bind mount (module docs).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "kebab-case")]
pub enum MountApi {
    /// `open_tree` + `mount_setattr` + `move_mount` (5.12+).
    DetachedReadOnly,
    /// `open_tree` + `move_mount`, then a bind remount (5.2 - 5.11: no `mount_setattr`).
    AttachThenRemount,
    /// `mount(MS_BIND)` through `/proc/self/fd`, then a bind remount (before 5.2).
    Classic,
}

impl MountApi {
    /// Asks the kernel which mount syscalls exist: each probe is one call with an invalid fd,
    /// which fails with EBADF (or EINVAL) where the syscall exists and ENOSYS where it does not
    /// (or where a seccomp filter hides it). Cheaper than reading any cached verdict.
    pub fn probe() -> Self {
        let exists = |nr: libc::c_long| {
            // SAFETY: every probed syscall takes a dirfd first; -1 is never a valid fd, so the
            // kernel fails before it reads the (null) path or attribute pointers.
            let rc = unsafe {
                libc::syscall(
                    nr,
                    -1,
                    std::ptr::null::<libc::c_char>(),
                    0,
                    std::ptr::null::<libc::c_void>(),
                    0,
                )
            };
            !(rc < 0 && std::io::Error::last_os_error().raw_os_error() == Some(libc::ENOSYS))
        };
        if !(exists(libc::SYS_open_tree) && exists(libc::SYS_move_mount)) {
            Self::Classic
        } else if exists(libc::SYS_mount_setattr) {
            Self::DetachedReadOnly
        } else {
            Self::AttachThenRemount
        }
    }

    /// How `npu-ctk doctor` describes it.
    pub fn describe(self) -> &'static str {
        match self {
            Self::DetachedReadOnly => {
                "open_tree + mount_setattr + move_mount: read-only before it is attached"
            }
            Self::AttachThenRemount => {
                "open_tree + move_mount, then a bind remount (no mount_setattr: kernel before 5.12)"
            }
            Self::Classic => {
                "bind mount through /proc/self/fd, then a bind remount (no open_tree/move_mount: \
                 kernel before 5.2)"
            }
        }
    }
}

/// A source ready to attach.
pub struct Prepared {
    /// Where it goes in the container (same path as on the host, under driver_root).
    pub container_path: PathBuf,
    pub is_dir: bool,
    source: Source,
}

enum Source {
    /// A detached bind mount of the host path, made in the host's mount namespace; read-only
    /// already unless `remount` (no `mount_setattr`).
    Tree { tree: OwnedFd, remount: bool },
    /// The host path, opened and checked again inside the container's mount namespace: a
    /// bind mount's source must be in the namespace it is mounted in.
    Path { host: PathBuf, allow_link: bool },
}

/// Directories below `driver_root` already found root-owned and not world-writable in this
/// run: a mount list names many files in the same few directories, and each would otherwise
/// cost an `lstat` of every directory above it again.
pub type CheckedDirs = std::collections::BTreeSet<PathBuf>;

/// Checks the host source of `path` (under `driver_root`) and, where the kernel can, makes its
/// detached bind mount. `Ok(None)`: the source does not exist (logged and skipped).
pub fn prepare(
    driver_root: &Path,
    path: &Path,
    allow_link: bool,
    api: MountApi,
    checked: &mut CheckedDirs,
) -> Result<Option<Prepared>, MountError> {
    let rel = path.strip_prefix("/").unwrap_or(path);
    let host = driver_root.join(rel);
    let refused = |reason: String| MountError::Refused {
        path: host.clone(),
        reason,
    };
    let meta = match std::fs::symlink_metadata(&host) {
        Ok(m) => m,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
            tracing::info!(source = %host.display(), "mount source missing; skipped");
            return Ok(None);
        }
        Err(e) => return Err(io("inspect", &host)(e)),
    };
    // Every directory from driver_root down must be root-owned and not world-writable, or
    // someone else could swap what we mount.
    // A directory checked before had every one above it checked too.
    let mut dir = host.parent();
    while let Some(d) = dir {
        if !d.starts_with(driver_root) || d == driver_root || checked.contains(d) {
            break;
        }
        let m = std::fs::symlink_metadata(d).map_err(io("inspect", d))?;
        check_owner(&m, d).map_err(|reason| MountError::Refused {
            path: host.clone(),
            reason: format!("parent {}: {reason}", d.display()),
        })?;
        dir = d.parent();
    }
    checked.extend(
        host.ancestors()
            .skip(1)
            .take_while(|d| d.starts_with(driver_root) && *d != driver_root)
            .map(Path::to_path_buf),
    );
    let is_link = meta.file_type().is_symlink();
    if is_link {
        if !allow_link {
            return Err(refused(
                "it is a symlink (set ASCEND_ALLOW_LINK=True to allow root-owned links)".into(),
            ));
        }
        // A link's own mode is always 0777: only its owner matters; the target is judged on
        // the opened handle below.
        if meta.uid() != 0 {
            return Err(refused(format!(
                "the symlink is owned by uid {}, not root",
                meta.uid()
            )));
        }
    }
    if api == MountApi::Classic {
        // Judged here, so a bad source fails before the container's namespace is entered, and
        // judged again on the handle that is mounted.
        let file = open_source(&host, allow_link)?;
        let is_dir = check_source(&file, &host)?;
        return Ok(Some(Prepared {
            container_path: path.to_path_buf(),
            is_dir,
            source: Source::Path { host, allow_link },
        }));
    }
    let mut flags = OpenTreeFlags::OPEN_TREE_CLONE | OpenTreeFlags::OPEN_TREE_CLOEXEC;
    if !is_link {
        flags |= OpenTreeFlags::AT_SYMLINK_NOFOLLOW;
    }
    let tree = rustix::mount::open_tree(rustix::fs::CWD, &host, flags)
        .map_err(|e| io("open", &host)(e.into()))?;
    // Judge what will actually be mounted, not the path we looked at.
    let file = File::from(tree);
    let is_dir = check_source(&file, &host)?;
    let tree = OwnedFd::from(file);
    let remount = api == MountApi::AttachThenRemount;
    if !remount {
        set_read_only(&tree).map_err(io("make read-only", &host))?;
    }
    Ok(Some(Prepared {
        container_path: path.to_path_buf(),
        is_dir,
        source: Source::Tree { tree, remount },
    }))
}

/// Opens a mount source `O_PATH`, following a final symlink only when links are allowed.
fn open_source(host: &Path, allow_link: bool) -> Result<File, MountError> {
    let mut flags = OFlags::PATH | OFlags::CLOEXEC;
    if !allow_link {
        flags |= OFlags::NOFOLLOW;
    }
    rustix::fs::open(host, flags, Mode::empty())
        .map(File::from)
        .map_err(|e| io("open", host)(e.into()))
}

/// The owner, mode and type policy on an opened source; returns whether it is a directory.
fn check_source(file: &File, host: &Path) -> Result<bool, MountError> {
    let refused = |reason: String| MountError::Refused {
        path: host.into(),
        reason,
    };
    let meta = file.metadata().map_err(io("inspect", host))?;
    check_owner(&meta, host).map_err(refused)?;
    if !meta.is_dir() && !meta.is_file() {
        return Err(refused(
            "only regular files and directories are mounted".into(),
        ));
    }
    Ok(meta.is_dir())
}

fn check_owner(meta: &std::fs::Metadata, path: &Path) -> Result<(), String> {
    if meta.uid() != 0 {
        return Err(format!(
            "{} is owned by uid {}, not root",
            path.display(),
            meta.uid()
        ));
    }
    // The sticky bit does not make a writable directory safe for our purpose.
    if meta.permissions().mode() & 0o002 != 0 {
        return Err(format!("{} is world-writable", path.display()));
    }
    Ok(())
}

/// `mount_setattr(fd, "", AT_EMPTY_PATH, {RDONLY|NOSUID|NODEV})` on a detached tree.
fn set_read_only(tree: &OwnedFd) -> std::io::Result<()> {
    #[repr(C)]
    struct MountAttr {
        attr_set: u64,
        attr_clr: u64,
        propagation: u64,
        userns_fd: u64,
    }
    const MOUNT_ATTR_RDONLY: u64 = 0x1;
    const MOUNT_ATTR_NOSUID: u64 = 0x2;
    const MOUNT_ATTR_NODEV: u64 = 0x4;
    let attr = MountAttr {
        attr_set: MOUNT_ATTR_RDONLY | MOUNT_ATTR_NOSUID | MOUNT_ATTR_NODEV,
        attr_clr: 0,
        propagation: 0,
        userns_fd: 0,
    };
    let empty = CString::default();
    // SAFETY: `tree` is an open mount fd, `empty` a valid C string and `attr` a live
    // `struct mount_attr` whose exact size is passed; the kernel only reads them.
    let rc = unsafe {
        libc::syscall(
            libc::SYS_mount_setattr,
            tree.as_raw_fd(),
            empty.as_ptr(),
            libc::AT_EMPTY_PATH,
            &attr as *const MountAttr,
            std::mem::size_of::<MountAttr>(),
        )
    };
    if rc < 0 {
        Err(std::io::Error::last_os_error())
    } else {
        Ok(())
    }
}

fn in_root<'a>(
    op: &'static str,
    path: &'a Path,
) -> impl FnOnce(pathrs::error::Error) -> MountError + 'a {
    move |source| MountError::InRoot {
        op,
        path: path.into(),
        source,
    }
}

fn kind(meta: &std::fs::Metadata) -> &'static str {
    if meta.is_dir() {
        "directory"
    } else if meta.is_file() {
        "file"
    } else {
        "special file"
    }
}

/// Attaches a prepared mount at its path inside `root`, creating the target (and parents)
/// inside the rootfs when missing, and makes it read-only where that was left to do. Must run
/// in the container's mount namespace.
pub fn attach(root: &Root, prepared: Prepared) -> Result<(), MountError> {
    let path = &prepared.container_path;
    let target = open_target(root, path, prepared.is_dir)?;
    match prepared.source {
        Source::Tree { tree, remount } => {
            rustix::mount::move_mount(
                tree.as_fd(),
                "",
                target.as_fd(),
                "",
                MoveMountFlags::MOVE_MOUNT_F_EMPTY_PATH | MoveMountFlags::MOVE_MOUNT_T_EMPTY_PATH,
            )
            .map_err(|e| io("mount onto", path)(e.into()))?;
            if remount {
                // The tree's fd is the root of the mount just attached.
                remount_read_only(&tree, path)?;
            }
            Ok(())
        }
        Source::Path { host, allow_link } => {
            let source = open_source(&host, allow_link)?;
            if check_source(&source, &host)? != prepared.is_dir {
                return Err(MountError::Refused {
                    path: host,
                    reason: "it changed type while the container was being created".into(),
                });
            }
            rustix::mount::mount_bind(fd_path(&source), fd_path(&target))
                .map_err(|e| io("mount onto", path)(e.into()))?;
            // Resolved again, the target is the root of the new mount (lookups cross into
            // mounts); it must be the source's inode, or something else is mounted on top.
            let mounted = open_target(root, path, prepared.is_dir)?;
            let same = |a: &File, b: &File| {
                let (a, b) = (a.metadata(), b.metadata());
                matches!((a, b), (Ok(a), Ok(b)) if (a.dev(), a.ino()) == (b.dev(), b.ino()))
            };
            if !same(&mounted, &source) {
                let _ = rustix::mount::unmount(fd_path(&target), UnmountFlags::DETACH);
                return Err(MountError::Refused {
                    path: path.clone(),
                    reason: "after the bind mount, the target is not the mounted source".into(),
                });
            }
            remount_read_only(&mounted, path)
        }
    }
}

/// `/proc/self/fd/N` for an open handle: mount(2) takes paths, and this one names exactly the
/// handle's file whatever happens to the path it was opened by.
fn fd_path(fd: &impl AsRawFd) -> PathBuf {
    PathBuf::from(format!("/proc/self/fd/{}", fd.as_raw_fd()))
}

/// Makes the mount whose root `mount` is read-only, nosuid and nodev by a bind remount; on
/// failure the mount is detached again (it must never stay writable).
fn remount_read_only(mount: &impl AsRawFd, path: &Path) -> Result<(), MountError> {
    let flags = MountFlags::BIND | MountFlags::RDONLY | MountFlags::NOSUID | MountFlags::NODEV;
    rustix::mount::mount_remount(fd_path(mount), flags, "").map_err(|e| {
        let _ = rustix::mount::unmount(fd_path(mount), UnmountFlags::DETACH);
        io("make read-only", path)(e.into())
    })
}

/// Resolves (creating when missing) the mount target `path` inside `root` and checks that it
/// is of the source's kind.
fn open_target(root: &Root, path: &Path, is_dir: bool) -> Result<File, MountError> {
    let rel = path.strip_prefix("/").unwrap_or(path);
    let handle = if is_dir {
        open_dir(root, rel, path)?
    } else {
        match root.resolve(rel) {
            Ok(h) => OwnedFd::from(h),
            Err(e) if not_found(&e) => {
                let (Some(parent), Some(name)) = (rel.parent(), rel.file_name()) else {
                    return Err(in_root("resolve", path)(e));
                };
                let dir = open_dir(root, parent, path)?;
                // O_EXCL|O_NOFOLLOW: a name that appeared meanwhile (even a symlink) is not
                // followed here but resolved inside the root like any existing target.
                match rustix::fs::openat(
                    &dir,
                    name,
                    OFlags::CREATE | OFlags::EXCL | OFlags::NOFOLLOW | OFlags::CLOEXEC,
                    Mode::from_raw_mode(0o644),
                ) {
                    Ok(fd) => fd,
                    Err(rustix::io::Errno::EXIST) => root
                        .resolve(rel)
                        .map(OwnedFd::from)
                        .map_err(in_root("resolve", path))?,
                    Err(e) => return Err(io("create", path)(e.into())),
                }
            }
            Err(e) => return Err(in_root("resolve", path)(e)),
        }
    };
    let target = File::from(handle);
    let meta = target.metadata().map_err(io("inspect", path))?;
    if meta.is_dir() != is_dir || !(meta.is_dir() || meta.is_file()) {
        return Err(MountError::TargetType {
            path: path.into(),
            found: kind(&meta),
            expected: if is_dir { "directory" } else { "file" },
        });
    }
    Ok(target)
}

fn not_found(e: &pathrs::error::Error) -> bool {
    e.kind() == pathrs::error::ErrorKind::OsError(Some(rustix::io::Errno::NOENT.raw_os_error()))
}

/// Opens directory `dir` (relative) inside `root`, creating the components that are missing.
/// What exists is resolved by pathrs (`RESOLVE_IN_ROOT`: symlinks in the image stay inside the
/// rootfs); each missing component is made with `mkdirat` and opened `O_NOFOLLOW|O_DIRECTORY`
/// beneath its parent's handle. That is what pathrs's `mkdir_all` does too, minus its procfs
/// re-open of the starting handle, which mounts a private procfs instance: about 0.2 ms per
/// hook run to set up and tear down, on every container start.
fn open_dir(root: &Root, dir: &Path, path: &Path) -> Result<OwnedFd, MountError> {
    let mut existing = dir;
    let mut missing = Vec::new();
    let mut handle = loop {
        let lookup = if existing.as_os_str().is_empty() {
            Path::new("/")
        } else {
            existing
        };
        match root.resolve(lookup) {
            Ok(h) => break OwnedFd::from(h),
            Err(e) if not_found(&e) => match (existing.parent(), existing.file_name()) {
                (Some(parent), Some(name)) => {
                    missing.push(name);
                    existing = parent;
                }
                _ => return Err(in_root("resolve", path)(e)),
            },
            Err(e) => return Err(in_root("resolve", path)(e)),
        }
    };
    for name in missing.into_iter().rev() {
        match rustix::fs::mkdirat(&handle, name, Mode::from_raw_mode(0o755)) {
            // EEXIST: made meanwhile; the open below only accepts a real directory.
            Ok(()) | Err(rustix::io::Errno::EXIST) => {}
            Err(e) => return Err(io("create directory", path)(e.into())),
        }
        handle = rustix::fs::openat(
            &handle,
            name,
            OFlags::PATH | OFlags::DIRECTORY | OFlags::NOFOLLOW | OFlags::CLOEXEC,
            Mode::empty(),
        )
        .map_err(|e| io("open directory", path)(e.into()))?;
    }
    Ok(handle)
}

/// Creates a device node inside `root` (hook-only mode, where the runtime did not), with the
/// host node's mode and owner. An existing node for the same device is kept.
pub fn create_device(root: &Root, device: &ContainerDevice) -> Result<(), MountError> {
    let path = &device.container_path;
    let rel = path.strip_prefix("/").unwrap_or(path);
    let node = &device.node;
    let dev = rustix::fs::makedev(node.major, node.minor);
    if let Ok(handle) = root.resolve_nofollow(rel) {
        let meta = File::from(OwnedFd::from(handle))
            .metadata()
            .map_err(io("inspect", path))?;
        let same_type = match node.dev_type {
            DevType::Char => std::os::unix::fs::FileTypeExt::is_char_device(&meta.file_type()),
            DevType::Block => std::os::unix::fs::FileTypeExt::is_block_device(&meta.file_type()),
        };
        if same_type && meta.rdev() == dev {
            return Ok(());
        }
        return Err(MountError::TargetType {
            path: path.clone(),
            found: kind(&meta),
            expected: "device node",
        });
    }
    if let Some(parent) = rel.parent() {
        open_dir(root, parent, path)?;
    }
    let perm = std::fs::Permissions::from_mode(node.mode);
    let inode = match node.dev_type {
        DevType::Char => InodeType::CharacterDevice(perm, dev),
        DevType::Block => InodeType::BlockDevice(perm, dev),
    };
    root.create(rel, &inode).map_err(in_root("create", path))?;
    let handle = root
        .resolve_nofollow(rel)
        .map_err(in_root("resolve", path))?;
    rustix::fs::chownat(
        &handle,
        "",
        Some(rustix::fs::Uid::from_raw(node.uid)),
        Some(rustix::fs::Gid::from_raw(node.gid)),
        rustix::fs::AtFlags::EMPTY_PATH,
    )
    .map_err(|e| io("chown", path)(e.into()))
}

/// Proves that `api` makes a read-only, nosuid, nodev bind mount on this kernel: binds a
/// directory of a fresh temporary tree into another through [`prepare`] and [`attach`] (the
/// same calls a container start makes), then checks the mount's flags. The caller runs it in a
/// private mount namespace of its own (`npu-ctk doctor` forks for it).
pub fn self_test(api: MountApi) -> Result<(), String> {
    let dir = tempfile::Builder::new()
        .prefix("npu-mount-test-")
        .tempdir()
        .map_err(|e| format!("cannot make a temporary directory: {e}"))?;
    let driver = dir.path().join("driver");
    let rootfs = dir.path().join("rootfs");
    let lib = driver.join("lib");
    for d in [&lib, &rootfs] {
        std::fs::create_dir_all(d).map_err(|e| format!("cannot create {}: {e}", d.display()))?;
        std::fs::set_permissions(d, std::fs::Permissions::from_mode(0o755))
            .map_err(|e| format!("cannot chmod {}: {e}", d.display()))?;
    }
    std::fs::write(lib.join("probe"), "npu\n").map_err(|e| format!("cannot write: {e}"))?;
    let prepared = prepare(
        &driver,
        Path::new("/lib"),
        false,
        api,
        &mut CheckedDirs::new(),
    )
    .map_err(|e| e.to_string())?
    .ok_or("the test source vanished")?;
    let root = Root::open(&rootfs).map_err(|e| format!("cannot open the test root: {e}"))?;
    attach(&root, prepared).map_err(|e| e.to_string())?;
    let target = rootfs.join("lib");
    let flags = nix::sys::statvfs::statvfs(&target)
        .map_err(|e| format!("cannot statvfs {}: {e}", target.display()))?
        .flags();
    use nix::sys::statvfs::FsFlags;
    let missing: Vec<&str> = [
        (FsFlags::ST_RDONLY, "ro"),
        (FsFlags::ST_NOSUID, "nosuid"),
        (FsFlags::ST_NODEV, "nodev"),
    ]
    .into_iter()
    .filter(|(f, _)| !flags.contains(*f))
    .map(|(_, name)| name)
    .collect();
    let seen = std::fs::read_to_string(target.join("probe")).unwrap_or_default();
    let _ = rustix::mount::unmount(&target, UnmountFlags::DETACH);
    if !missing.is_empty() {
        return Err(format!("the bind mount lacks {}", missing.join(", ")));
    }
    if seen != "npu\n" {
        return Err("the bind mount does not show its source".into());
    }
    Ok(())
}

/// Runs `f` in the mount namespace of process `pid`, then returns to ours.
pub fn in_mount_namespace<T>(pid: u32, f: impl FnOnce() -> T) -> Result<T, MountError> {
    let ours_path = Path::new("/proc/self/ns/mnt");
    let theirs_path = PathBuf::from(format!("/proc/{pid}/ns/mnt"));
    let ours = File::open(ours_path).map_err(io("open", ours_path))?;
    let theirs = File::open(&theirs_path).map_err(io("open", &theirs_path))?;
    nix::sched::setns(&theirs, nix::sched::CloneFlags::CLONE_NEWNS)
        .map_err(|e| io("enter mount namespace", &theirs_path)(e.into()))?;
    let result = f();
    // Coming back cannot fail for a namespace we were in a moment ago; if it ever did, the
    // hook's later host-side steps fail loudly on missing paths rather than act wrongly.
    nix::sched::setns(&ours, nix::sched::CloneFlags::CLONE_NEWNS)
        .map_err(|e| io("return to mount namespace", ours_path)(e.into()))?;
    Ok(result)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn list_syntax() {
        let text = "# driver\n/usr/local/Ascend/driver/lib64\n\n  /usr/local/bin/npu-smi  \n/usr/local/Ascend/driver/lib64\n";
        let got = parse_list(text, Path::new("/m/base.list")).unwrap();
        assert_eq!(
            got,
            [
                PathBuf::from("/usr/local/Ascend/driver/lib64"),
                PathBuf::from("/usr/local/bin/npu-smi")
            ]
        );
        for (bad, needle) in [
            ("usr/lib\n", "absolute"),
            ("/usr/../etc\n", "'..'"),
            ("/usr/./lib\n", "'..'"),
            ("/\n", "root directory"),
        ] {
            let e = parse_list(bad, Path::new("/m/x.list"))
                .unwrap_err()
                .to_string();
            assert!(
                e.contains("/m/x.list:1") && e.contains(needle),
                "{bad}: {e}"
            );
        }
        let e = parse_list("/ok\n\nrel\n", Path::new("/m/y.list"))
            .unwrap_err()
            .to_string();
        assert!(e.starts_with("/m/y.list:3"), "{e}");
    }

    #[test]
    fn missing_lists() {
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("extra.list"), "/a\n/b\n").unwrap();
        assert!(
            read_lists(dir.path(), &["base".into()], false)
                .unwrap()
                .is_empty()
        );
        let e = read_lists(dir.path(), &["base".into()], true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"base\""), "{e}");
        let e = read_lists(dir.path(), &["nope".into()], true)
            .unwrap_err()
            .to_string();
        assert!(e.contains("\"nope\"") && e.contains("nope.list"), "{e}");
        assert_eq!(
            read_lists(dir.path(), &["extra".into(), "extra".into()], true).unwrap(),
            [PathBuf::from("/a"), PathBuf::from("/b")]
        );
    }
}
