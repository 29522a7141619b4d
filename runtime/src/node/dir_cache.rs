//! Facts derived from one directory's entries, remembered in `state_dir/node/` while the
//! directory is unchanged. Adding, removing or renaming an entry changes the directory's
//! mtime and ctime, so what a scan of a server's `/dev` (hundreds of entries, an `lstat` each)
//! found costs the next container one `stat` and one small read instead.
use std::{
    os::unix::fs::MetadataExt,
    path::{Path, PathBuf},
    time::{Duration, SystemTime, UNIX_EPOCH},
};

use serde::{Deserialize, Serialize, de::DeserializeOwned};

use crate::node::state;

/// Longer than any filesystem's timestamp granularity (the kernel's coarse clock ticks in
/// milliseconds): a directory changed more recently could change again within the same tick
/// without its stamp changing, so what was read from it is not remembered.
const SETTLE: Duration = Duration::from_secs(1);

/// A directory's identity and last change.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
struct Stamp {
    dev: u64,
    ino: u64,
    mtime: (i64, i64),
    ctime: (i64, i64),
}

impl Stamp {
    fn of(dir: &Path) -> Option<Self> {
        let m = std::fs::metadata(dir).ok()?;
        Some(Self {
            dev: m.dev(),
            ino: m.ino(),
            mtime: (m.mtime(), m.mtime_nsec()),
            ctime: (m.ctime(), m.ctime_nsec()),
        })
    }

    /// Whether the last change was at least [`SETTLE`] before `looked` (taken before the
    /// stamp was read): any later change then falls in a later tick and shows in the stamp.
    fn settled(&self, looked: SystemTime) -> bool {
        let at = |(s, ns): (i64, i64)| {
            u64::try_from(s)
                .ok()
                .map(|s| UNIX_EPOCH + Duration::from_secs(s) + Duration::from_nanos(ns as u64))
        };
        [self.mtime, self.ctime]
            .into_iter()
            .all(|t| at(t).is_some_and(|t| looked.duration_since(t).is_ok_and(|age| age >= SETTLE)))
    }
}

#[derive(Serialize, Deserialize)]
struct Entry<V> {
    dir: PathBuf,
    stamp: Stamp,
    /// What else the value depends on (e.g. the device profiles' patterns).
    key: String,
    value: V,
}

/// `compute()` (which reads `dir`), or what it returned last time if `dir` and `key` are
/// unchanged since. The fact is kept as `state_dir/node/<name>.json`; failing to keep it
/// only costs the next caller a scan.
pub fn cached<T, E>(
    state_dir: &Path,
    name: &str,
    dir: &Path,
    key: &str,
    compute: impl FnOnce() -> Result<T, E>,
) -> Result<T, E>
where
    T: Serialize + DeserializeOwned,
{
    let looked = SystemTime::now();
    let before = Stamp::of(dir);
    if let Some(stamp) = &before
        && let Ok(Some(entry)) = state::read_node::<Entry<T>>(state_dir, name)
        && entry.dir == dir
        && entry.stamp == *stamp
        && entry.key == key
    {
        return Ok(entry.value);
    }
    let value = compute()?;
    if let Some(stamp) = before
        && stamp.settled(looked)
        && Stamp::of(dir).as_ref() == Some(&stamp)
    {
        let entry = Entry {
            dir: dir.to_path_buf(),
            stamp,
            key: key.to_string(),
            value: &value,
        };
        if let Err(e) = state::write_node(state_dir, name, &entry) {
            tracing::debug!("{name} not remembered: {e}");
        }
    }
    Ok(value)
}

#[cfg(test)]
mod tests {
    use super::*;

    /// Sets `dir`'s mtime a minute back; its ctime becomes now (only the kernel sets ctimes),
    /// so the directory still counts as just changed.
    fn age(dir: &Path) {
        let old = std::fs::File::open(dir).unwrap();
        old.set_modified(SystemTime::now() - Duration::from_secs(60))
            .unwrap();
    }

    #[test]
    fn remembered_while_unchanged_rescanned_after_a_change() {
        let state = tempfile::tempdir().unwrap();
        let state_dir = state.path().join("state");
        let dir = tempfile::tempdir().unwrap();
        std::fs::write(dir.path().join("a"), "").unwrap();
        let list = || -> Result<Vec<String>, ()> {
            let mut names: Vec<String> = std::fs::read_dir(dir.path())
                .unwrap()
                .map(|e| e.unwrap().file_name().to_string_lossy().into_owned())
                .collect();
            names.sort();
            Ok(names)
        };
        let calls = std::cell::Cell::new(0);
        let counted = || {
            calls.set(calls.get() + 1);
            list()
        };
        // A directory changed just now is not remembered (its ctime is new: setting the
        // mtime changes it).
        age(dir.path());
        assert_eq!(
            cached(&state_dir, "t", dir.path(), "k", counted),
            Ok(vec!["a".into()])
        );
        assert_eq!(
            cached(&state_dir, "t", dir.path(), "k", counted),
            Ok(vec!["a".into()])
        );
        assert_eq!(calls.get(), 2, "a fresh change was trusted");

        // Remembered: an entry with the directory's current stamp (as an old one would be).
        let stamp = Stamp::of(dir.path()).unwrap();
        let entry = Entry {
            dir: dir.path().to_path_buf(),
            stamp,
            key: "k".to_string(),
            value: vec!["remembered".to_string()],
        };
        state::write_node(&state_dir, "t", &entry).unwrap();
        assert_eq!(
            cached(&state_dir, "t", dir.path(), "k", counted),
            Ok(vec!["remembered".into()])
        );
        assert_eq!(calls.get(), 2, "scanned although unchanged");
        // Another key (other profiles) scans.
        assert_eq!(
            cached(&state_dir, "t", dir.path(), "k2", counted),
            Ok(vec!["a".into()])
        );
        // A new entry changes the stamp: scanned again.
        std::fs::write(dir.path().join("b"), "").unwrap();
        assert_eq!(
            cached(&state_dir, "t", dir.path(), "k", counted),
            Ok(vec!["a".into(), "b".into()])
        );
        assert_eq!(calls.get(), 4);
    }

    #[test]
    fn only_a_private_state_dir_counts() {
        let state = tempfile::tempdir().unwrap();
        let state_dir = state.path().join("state");
        let dir = tempfile::tempdir().unwrap();
        let entry = Entry {
            dir: dir.path().to_path_buf(),
            stamp: Stamp::of(dir.path()).unwrap(),
            key: "k".to_string(),
            value: 1u32,
        };
        state::write_node(&state_dir, "t", &entry).unwrap();
        assert_eq!(
            cached(&state_dir, "t", dir.path(), "k", || Ok::<_, ()>(2)),
            Ok(1)
        );
        // Someone else could have written it: scanned instead.
        std::fs::set_permissions(
            state_dir.join("node"),
            std::os::unix::fs::PermissionsExt::from_mode(0o777),
        )
        .unwrap();
        assert_eq!(
            cached(&state_dir, "t", dir.path(), "k", || Ok::<_, ()>(2)),
            Ok(2)
        );
    }

    #[test]
    fn settled_means_older_than_a_tick_when_looked_at() {
        let dir = tempfile::tempdir().unwrap();
        let fresh = Stamp::of(dir.path()).unwrap();
        assert!(!fresh.settled(SystemTime::now()));
        let old = Stamp {
            mtime: (fresh.mtime.0 - 10, 0),
            ctime: (fresh.ctime.0 - 10, 0),
            ..fresh
        };
        assert!(old.settled(SystemTime::now()));
        // Looked at right after the change: not settled, however long the scan then took.
        let changed = UNIX_EPOCH + Duration::from_secs(fresh.mtime.0 as u64);
        assert!(!fresh.settled(changed + Duration::from_millis(10)));
    }

    #[test]
    fn a_settled_directory_is_scanned_once() {
        let state = tempfile::tempdir().unwrap();
        let state_dir = state.path().join("state");
        let dir = tempfile::tempdir().unwrap();
        std::thread::sleep(SETTLE + Duration::from_millis(100));
        let calls = std::cell::Cell::new(0);
        let counted = || {
            calls.set(calls.get() + 1);
            Ok::<_, ()>(7u32)
        };
        assert_eq!(cached(&state_dir, "t", dir.path(), "k", counted), Ok(7));
        assert_eq!(cached(&state_dir, "t", dir.path(), "k", counted), Ok(7));
        assert_eq!(calls.get(), 1, "a settled directory was scanned twice");
    }
}
