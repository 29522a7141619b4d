//! Trust boundaries: the files that decide what root does for every container must be files
//! only root could have written. The configuration (it names the binary root executes and what
//! reaches containers), the mount lists, the low-level runtime and the hook binary each pass
//! [`trusted_file`]; the directories of records and pins pass [`private_dir`].
//!
//! A path is trusted when the file and every directory above it are owned by root and not
//! writable by group or others. A directory with the sticky bit owned by root (such as /tmp)
//! may be writable by all: nobody else can rename or remove what is in it. The file is a
//! regular file; a symlink is followed only if it is owned by root and its target passes too.
use std::{
    os::unix::fs::{DirBuilderExt, MetadataExt, PermissionsExt},
    path::{Path, PathBuf},
};

#[derive(Debug, thiserror::Error)]
pub enum TrustError {
    #[error(
        "refusing {path}: {culprit} is owned by uid {uid} (mode {mode:04o}); it must be owned by \
         root and not writable by group or others: chown root {culprit} && chmod go-w {culprit}"
    )]
    Untrusted {
        path: PathBuf,
        culprit: PathBuf,
        uid: u32,
        mode: u32,
    },
    #[error("refusing {path}: it is a {kind}, not a regular file")]
    NotAFile { path: PathBuf, kind: &'static str },
    #[error("cannot inspect {path}: {source}")]
    Inspect {
        path: PathBuf,
        source: std::io::Error,
    },
    #[error(
        "refusing {path}: it exists, owned by uid {uid} with mode {mode:04o}, and someone other \
         than root could have made it first; remove it (it is recreated 0700 root) or fix it: \
         chown root {path} && chmod 0700 {path}"
    )]
    UntrustedDir { path: PathBuf, uid: u32, mode: u32 },
    #[error("cannot create {path}: {source}")]
    Create {
        path: PathBuf,
        source: std::io::Error,
    },
}

/// Whether a file of owner `uid` and `mode` is something only root can change: owned by root,
/// and not writable by group or others unless it is a sticky directory.
fn root_only_mode(uid: u32, mode: u32, is_dir: bool) -> bool {
    let sticky_dir = is_dir && mode & 0o1000 != 0;
    uid == 0 && (mode & 0o022 == 0 || sticky_dir)
}

fn root_only(meta: &std::fs::Metadata) -> bool {
    root_only_mode(meta.uid(), meta.permissions().mode(), meta.is_dir())
}

fn inspect(path: &Path) -> Result<std::fs::Metadata, TrustError> {
    std::fs::symlink_metadata(path).map_err(|source| TrustError::Inspect {
        path: path.into(),
        source,
    })
}

fn untrusted(path: &Path, culprit: &Path, meta: &std::fs::Metadata) -> TrustError {
    TrustError::Untrusted {
        path: path.into(),
        culprit: culprit.into(),
        uid: meta.uid(),
        mode: meta.permissions().mode() & 0o7777,
    }
}

/// Checks every directory above `path` (not `path` itself), following none of them: a
/// directory that is a symlink must be root's and its target is checked whole.
fn check_ancestors(path: &Path, shown: &Path) -> Result<(), TrustError> {
    let mut dir = path.parent();
    while let Some(d) = dir {
        if d.as_os_str().is_empty() {
            break;
        }
        let meta = inspect(d)?;
        if meta.file_type().is_symlink() {
            if meta.uid() != 0 {
                return Err(untrusted(shown, d, &meta));
            }
            let target = std::fs::canonicalize(d).map_err(|source| TrustError::Inspect {
                path: d.into(),
                source,
            })?;
            check_dir_chain(&target, shown)?;
        } else if !root_only(&meta) {
            return Err(untrusted(shown, d, &meta));
        }
        dir = d.parent();
    }
    Ok(())
}

/// `dir` and every directory above it.
fn check_dir_chain(dir: &Path, shown: &Path) -> Result<(), TrustError> {
    let meta = inspect(dir)?;
    if !root_only(&meta) {
        return Err(untrusted(shown, dir, &meta));
    }
    check_ancestors(dir, shown)
}

/// Checks that `path` names a regular file only root could have written (module docs).
pub fn trusted_file(path: &Path) -> Result<(), TrustError> {
    let path = &std::path::absolute(path).map_err(|source| TrustError::Inspect {
        path: path.into(),
        source,
    })?;
    check_ancestors(path, path)?;
    let meta = inspect(path)?;
    let meta = if meta.file_type().is_symlink() {
        if meta.uid() != 0 {
            return Err(untrusted(path, path, &meta));
        }
        let target = std::fs::canonicalize(path).map_err(|source| TrustError::Inspect {
            path: path.clone(),
            source,
        })?;
        check_ancestors(&target, path)?;
        let meta = inspect(&target)?;
        if !root_only(&meta) {
            return Err(untrusted(path, &target, &meta));
        }
        meta
    } else {
        meta
    };
    if !meta.is_file() {
        let kind = if meta.is_dir() {
            "directory"
        } else {
            "special file"
        };
        return Err(TrustError::NotAFile {
            path: path.clone(),
            kind,
        });
    }
    if !root_only(&meta) {
        return Err(untrusted(path, path, &meta));
    }
    Ok(())
}

/// Checks an existing private directory (see [`private_dir`]) without creating anything:
/// `Ok(false)` if it does not exist.
pub fn check_private_dir(dir: &Path) -> Result<bool, TrustError> {
    let meta = match std::fs::symlink_metadata(dir) {
        Ok(meta) => meta,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(false),
        Err(source) => {
            return Err(TrustError::Inspect {
                path: dir.into(),
                source,
            });
        }
    };
    let mode = meta.permissions().mode() & 0o7777;
    if meta.file_type().is_symlink() || !meta.is_dir() || meta.uid() != 0 || mode & 0o022 != 0 {
        return Err(TrustError::UntrustedDir {
            path: dir.into(),
            uid: meta.uid(),
            mode,
        });
    }
    check_ancestors(dir, dir)?;
    Ok(true)
}

/// Makes sure `dir` is a directory only root can use: created 0700 (with its missing parents)
/// if absent; an existing one must be root's, not writable by group or others, and no symlink
/// (someone else could have made it first, to read or plant what we keep there). The
/// directories above it must be trusted too.
pub fn private_dir(dir: &Path) -> Result<(), TrustError> {
    if check_private_dir(dir)? {
        return Ok(());
    }
    std::fs::DirBuilder::new()
        .recursive(true)
        .mode(0o700)
        .create(dir)
        .map_err(|source| TrustError::Create {
            path: dir.into(),
            source,
        })?;
    // Made by us or, in a race, by someone else: judged like any existing one.
    check_private_dir(dir).map(drop)
}

/// Whether `e` says that the path, or a directory above it, does not exist.
pub fn is_missing(e: &TrustError) -> bool {
    matches!(e, TrustError::Inspect { source, .. } if source.kind() == std::io::ErrorKind::NotFound)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn only_root_may_write() {
        assert!(root_only_mode(0, 0o644, false));
        assert!(root_only_mode(0, 0o755, true));
        assert!(!root_only_mode(1000, 0o644, false), "another owner");
        assert!(!root_only_mode(0, 0o664, false), "group-writable");
        assert!(!root_only_mode(0, 0o666, false), "world-writable");
        assert!(!root_only_mode(0, 0o777, true), "world-writable directory");
        assert!(
            root_only_mode(0, 0o1777, true),
            "root's sticky directory, like /tmp"
        );
        assert!(
            !root_only_mode(1000, 0o1777, true),
            "someone else's sticky directory"
        );
        assert!(
            !root_only_mode(0, 0o1666, false),
            "the sticky bit does not help a file"
        );
    }

    #[test]
    fn this_machine_s_own_files_are_trusted() {
        // Root-owned system paths pass whoever runs the test; a missing one says so.
        trusted_file(Path::new("/etc/passwd")).unwrap();
        let e = trusted_file(Path::new("/etc/npu-no-such-dir/config.toml")).unwrap_err();
        assert!(is_missing(&e), "{e}");
        let e = trusted_file(Path::new("/etc")).unwrap_err();
        assert!(e.to_string().contains("not a regular file"), "{e}");
    }
}
